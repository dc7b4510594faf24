"""The language model on --target mobile: a tiny random Llama exported by targets/mobile/lm.py to ExecuTorch
programs with their KV cache (fp32, 8da4w, 8da8w), run on ExecuTorch's runtime on this host."""
import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")

VOCAB = 64
CACHE = 40


def _tokenizer():
    """A word-level tokenizer of VOCAB tokens, built offline (no hub download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    t = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _tiny(seed: int, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # widths that are multiples of 32: the 8da4w program quantizes every linear layer in whole groups
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


PROMPTS = [[1, 5, 9, 13, 17], [1, 40, 41, 7], [1, 3, 3, 3, 60, 22, 8, 11]]


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The student's folder and its three programs, exported once for the module (lowering takes seconds)."""
    from edgekd.targets.mobile.lm import PTE_VARIANTS, export_lm_pte

    d = tmp_path_factory.mktemp("lm")
    _tiny(0, layers=1).save_pretrained(d / "hf")  # one layer: lowering a quantized program scales with the layers
    _tokenizer().save_pretrained(d / "hf")
    infos = {v: export_lm_pte(d / "hf", d / f"{v}.pte", v, CACHE) for v in PTE_VARIANTS}
    return d, infos


def test_fp32_program_decodes_greedily_like_pytorch_through_its_cache(programs):
    import torch

    from edgekd.llm.models import load_causal_lm
    from edgekd.runtimes.executorch_lm import PteLM

    d, infos = programs
    model, _ = load_causal_lm(d / "hf")
    lm = PteLM(d / "pte-fp32.pte")
    assert lm.max_len == CACHE and infos["pte-fp32"]["delegated_nodes"] > 0
    for p in PROMPTS:
        toks, timing = lm.generate(p, 12, stop=[])
        # one decode call per generated token after the prefill: the cache carries the context
        assert len(toks) == 12 and len(timing["step_s"]) == 11
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
            logits = model(input_ids=torch.tensor([p])).logits[0].numpy()
        assert toks == ref
        np.testing.assert_allclose(lm.logits(p), logits, atol=1e-4)
    # a longer sequence after a shorter one and vice versa: stale cache rows are never read
    again, _ = lm.generate(PROMPTS[0], 12, stop=[])
    assert again == lm.generate(PROMPTS[0], 12, stop=[])[0]
    # greedy_parity (what the convert stage gates on) agrees
    from edgekd.targets.mobile.lm import greedy_parity

    par = greedy_parity(d / "hf", d / "pte-fp32.pte", PROMPTS, 8, [2], atol=1e-3, rtol=1e-3)
    assert par["ok"] and par["greedy_mismatches"] == [], par
    with pytest.raises(Exception, match="do not fit"):
        lm.forward(list(range(3, 3 + 20)), CACHE - 10)


def test_agreement_through_the_cache_equals_pytorchs(programs):
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.sequences import Example, evaluate
    from edgekd.targets.mobile.lm import evaluate_pte

    d, _ = programs
    model, _ = load_causal_lm(d / "hf")
    ex = [Example(p + [7, 9, 30, 2], len(p)) for p in PROMPTS]
    a, b = evaluate(model, ex, pad=0), evaluate_pte(d / "pte-fp32.pte", ex)
    assert a["tokens"] == b["tokens"] == 12
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-4)
    assert b["agreement"] == pytest.approx(a["agreement"], abs=1e-9)


def test_quantized_programs_load_run_and_are_smaller(programs):
    from edgekd.runtimes.executorch_lm import PteLM

    d, infos = programs
    fp32 = PteLM(d / "pte-fp32.pte")
    for v in ("pte-8da4w", "pte-8da8w"):
        info = infos[v]
        q = info["settings"]["quantize"]
        assert q["linear"] == v.removeprefix("pte-") and q["embedding"] == "8w"
        assert q["per_channel_int8_layers"] == []  # every width here holds whole int4 groups of 32
        assert info["size_bytes"] < infos["pte-fp32"]["size_bytes"] * 0.6, (v, info["size_bytes"])
        lm = PteLM(d / f"{v}.pte")
        z, ref = lm.logits(PROMPTS[2]), fp32.logits(PROMPTS[2])
        assert np.isfinite(z).all() and z.shape == ref.shape
        # quantized, not broken: the logits follow the fp32 program's closely on a random model
        assert np.corrcoef(z.ravel(), ref.ravel())[0, 1] > 0.95, v
        toks, _ = lm.generate(PROMPTS[0], 6, stop=[])
        assert len(toks) == 6 and all(0 <= t < VOCAB for t in toks)
    # int4 groups are smaller than int8 channels
    assert infos["pte-8da4w"]["size_bytes"] < infos["pte-8da8w"]["size_bytes"]


def test_generation_benchmark_runs_a_pte(programs):
    from edgekd.cards import load_target
    from edgekd.llm.bench import run_spec
    from edgekd.profile.spec import GenerationSettings, GenerationSpec

    d, _ = programs
    cpu = load_target("cpu").device
    # enough tokens for the process CPU clock (10 ms ticks) to see the decode: the energy estimate's input
    st = GenerationSettings(threads=1, prompts=2, new_tokens=8, repeats=30, device=cpu, profiled_on="host",
                            profile_device=cpu)
    r = run_spec(GenerationSpec(kind="pte", path=str(d / "pte-8da4w.pte"), prompt_ids=PROMPTS[:2], settings=st,
                                energy="none"))
    assert r["generations"] == 60 and r["new_tokens"] == 8 and r["ttft_ms"]["p50"] > 0 and r["tokens_per_s"] > 0
    assert r["decode_ms_per_token"]["n"] == 60 * 7 and r["peak_rss_bytes"] > 0
    assert r["energy"]["method"].startswith("estimate-") and r["energy"]["joules_per_token"] > 0


def test_bundle_manifest_sha256s_match_the_files(programs, tmp_path):
    from edgekd.errors import StageError
    from edgekd.fsio import sha256_file
    from edgekd.targets.base import LanguageModelPayload
    from edgekd.targets.mobile.lm import write_lm_bundle
    from edgekd.targets.mobile.lm_adb import verify_lm_bundle

    d, _ = programs
    payload = LanguageModelPayload(student_dir=d / "hf", teacher_dir=d / "hf", val=[], test=[], val_prompts=PROMPTS,
                                   test_prompts=PROMPTS, pad_id=0, stop_ids=[2], max_length=24, max_new_tokens=8,
                                   chat_template="{{ messages }}")
    b = write_lm_bundle(tmp_path, d / "pte-8da4w.pte", "pte-8da4w", payload, CACHE)
    man = json.loads((b / "manifest.json").read_text())
    assert {"model.pte", "tokenizer.json", "generation.json", "README.txt"} <= set(man["files"])
    for name, e in man["files"].items():
        assert sha256_file(b / name) == e["sha256"] and (b / name).stat().st_size == e["size_bytes"]
    assert sha256_file(b / "model.pte") == sha256_file(d / "pte-8da4w.pte")
    gen = json.loads((b / "generation.json").read_text())
    assert gen["stop_token_ids"] == [2] and gen["chat_template"] == "{{ messages }}" and gen["max_context_length"] == CACHE
    assert verify_lm_bundle(b)["variant"] == "pte-8da4w"
    (b / "generation.json").write_text("{}")
    with pytest.raises(StageError, match="generation.json"):
        verify_lm_bundle(b)


def test_the_recipes_candidates_name_the_programs_made():
    from edgekd.targets.mobile.lm import pte_variants

    assert pte_variants(["fp32"]) == ["pte-fp32"]
    assert pte_variants(["fp32", "int8-dynamic", "int8-weight", "int4-weight"]) == ["pte-fp32", "pte-8da4w", "pte-8da8w"]
    assert pte_variants(["fp32", "int4-weight", "fp16"]) == ["pte-fp32", "pte-8da4w"]


def test_the_shipped_program_is_the_fastest_within_the_budget_of_fp32s_validation_agreement():
    from edgekd.quantize.budget import Budget
    from edgekd.targets.mobile.lm import select_pte

    def art(val, tps):
        return {"error": None, "val": {"agreement": val}, "profile": {"tokens_per_s": tps}}

    arts = {"pte-fp32": art(0.50, 200.0), "pte-8da4w": art(0.47, 450.0), "pte-8da8w": art(0.495, 400.0),
            "pte-x": {"error": "lowering failed"}}
    c = select_pte(arts, Budget(2.0))
    assert c["selected"] == "student/pte-8da8w"  # 8da4w is faster but 3 points below fp32 on validation
    assert c["status"] == {"pte-fp32": "kept", "pte-8da4w": "over-budget", "pte-8da8w": "selected",
                           "pte-x": "failed: lowering failed"}
    assert select_pte(arts, Budget(5.0))["selected"] == "student/pte-8da4w"


def test_the_teacher_quantized_for_the_phone_is_a_teacher_row_with_a_verdict(programs, tmp_path, monkeypatch):
    """generate.teacher_on_target: the teacher's 8da8w program (the student's pte-8da8w scheme) is scored on the test
    examples through its cache and becomes a teacher row marked `quantization`, which the distill-vs-quantize verdict
    on the shipped program's runtime reads. (The benchmark process is test_generation_benchmark_runs_a_pte's.)"""
    from edgekd.cards import load_target
    from edgekd.llm.sequences import Example
    from edgekd.profile.spec import GenerationSettings
    from edgekd.report.build import distill_vs_quantize
    from edgekd.targets.base import LanguageModelPayload
    from edgekd.targets.mobile import lm as mobile_lm

    d, infos = programs
    cpu = load_target("cpu").device
    st = GenerationSettings(threads=1, prompts=1, new_tokens=4, repeats=1, device=cpu, profiled_on="host",
                            profile_device=cpu)
    benched = []
    monkeypatch.setattr(mobile_lm, "_bench", lambda path, name, prompts, settings, logs: benched.append(name) or {
        "tokens_per_s": 100.0, "ttft_ms": {"p50": 5.0}, "decode_ms_per_token": {"p50": 10.0},
        "latency_ms": {"p50": 10.0}, "peak_rss_bytes": 1, "energy": {"joules_per_token": 0.01, "method": "estimate-test"}})
    test = [Example(p + [7, 8, 9], len(p)) for p in PROMPTS]
    payload = LanguageModelPayload(student_dir=d / "hf", teacher_dir=d / "hf", val=[], test=test, val_prompts=PROMPTS,
                                   test_prompts=PROMPTS, pad_id=0, stop_ids=[2], max_length=24, max_new_tokens=8,
                                   chat_template=None)
    # the teacher here is the student's own folder: its 8da8w program is the module's (lowering one takes ~20 s), so
    # the export is the fixture's file, asked for with the teacher's folder and the student's 8da8w scheme
    exported = []

    def export(src, path, variant, cache_len):
        exported.append((Path(src), variant, cache_len))
        shutil.copy(d / f"{variant}.pte", path)
        return copy.deepcopy(infos[variant])
    monkeypatch.setattr(mobile_lm, "export_lm_pte", export)
    t = mobile_lm._quantized_teacher_pte(payload, tmp_path, CACHE, PROMPTS[:1], st, tmp_path / "logs", print)
    assert t["error"] is None and benched == ["teacher/pte-8da8w"] and (tmp_path / "teacher_8da8w.pte").is_file()
    # the same scheme as the student's 8da8w program
    assert exported == [(d / "hf", "pte-8da8w", CACHE)] and mobile_lm.TEACHER_PTE_QUANTIZED == "pte-8da8w"
    assert 0.0 <= t["test"]["agreement"] <= 1.0 and np.isfinite(t["test"]["perplexity"])
    row = {**mobile_lm.pte_row("teacher", "pte-8da8w", t, "pte/teacher_8da8w.pte", st), "quantization": "8da8w"}
    student = {**row, "role": "student", "variant": "pte-8da4w", "size_bytes": t["size_bytes"] // 2,
               "tokens_per_s": 200.0, "accuracy": row["accuracy"] + 0.01}
    dq = distill_vs_quantize([row, student], "student/pte-8da4w")
    assert dq["runtime"] == "executorch (xnnpack)" and dq["on_speed"]["verdict"] == "beats"
