"""Ascend on the device (fake atc/msit/npu-smi replaying recorded output, tests/ascend_fakes.py),
the FP16 precision preflight and its keep_dtype list, token-id bundles, and check_outputs.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.errors import DataError, StageError, UserError
from edgekd.targets.ascend import bundle as ascend
from edgekd.targets.ascend.precision import fp16_preflight
from edgekd.profile.measure.energy import NpuSmiSampler
from edgekd.targets.ascend import device as ascend_device
from tests import ascend_fakes
from tests.export.test_ascend import _card

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "ascend"


# --------------------------------------------------------------------------- parsers on recorded output


def test_msit_summary_parsed_from_recorded_output():
    s = ascend_device.parse_msit_summary((DATA / "msit_benchmark.txt").read_text())
    lat = s["latency_ms"]
    assert lat["min"] == pytest.approx(0.2150000035762787) and lat["p50"] == pytest.approx(0.2280000001192093)
    assert lat["mean"] == pytest.approx(0.2317399978637695) and lat["p99"] == pytest.approx(0.3096099972724915)
    assert s["throughput_per_s"] == pytest.approx(4315.18) and s["batch"] == 1
    assert s["h2d_ms"]["mean"] == pytest.approx(0.0452100002765655)


def test_msit_summary_older_throughput_form_and_missing_summary():
    text = ("[INFO] NPU_compute_time (ms): min = 21.8, max = 22.4, mean = 21.9, median = 21.9, percentile(99%) = 22.3\n"
            "[INFO] throughput 1000*batchsize(16)/NPU_compute_time.mean(21.9): 730.5\n")
    s = ascend_device.parse_msit_summary(text)
    assert s["batch"] == 16 and s["throughput_per_s"] == pytest.approx(730.5) and "h2d_ms" not in s
    with pytest.raises(StageError, match="NPU_compute_time"):
        ascend_device.parse_msit_summary("[INFO] load model model.om success\n[ERROR] run failed\n")


def test_npu_smi_table_gives_the_soc(tmp_path, monkeypatch):
    chips = ascend_device.parse_npu_smi_chips((DATA / "npu_smi_info_310p.txt").read_text())
    assert chips == [{"npu_id": 0, "name": "310P3", "health": "OK"}]  # the Device/Bus-Id row is not a chip
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    soc, how = ascend_device.detect_ascend_soc()
    assert soc == "Ascend310P3" and soc in ascend.KNOWN_SOC_VERSIONS and "310P3" in how


# --------------------------------------------------------------------------- device run with the fakes


def test_msit_run_with_npu_smi_sampling_subtracts_idle(tmp_path, monkeypatch):
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    om = tmp_path / "model.om"
    om.write_bytes(b"om")
    res = ascend_device.run_msit_on_device(om, loop=100, warmup=10, device_id=0, idle_seconds=0.3, interval_s=0.05)
    e = res["energy"]
    assert e["method"] == "npu-smi" and e["measured"] is True
    assert e["idle_watts"] == pytest.approx(ascend_fakes.IDLE_W)
    # (30 W - 12 W) for the 0.8 s the fake NPU is busy, over 110 calls; sampling at 50 ms blurs the edges.
    expected = (ascend_fakes.BUSY_W - ascend_fakes.IDLE_W) * ascend_fakes.BUSY_S / 110
    assert e["joules_per_inference"] == pytest.approx(expected, rel=0.25)
    assert e["joules_total"] > e["joules_above_idle"] > 0  # gross energy includes the idle floor
    assert res["latency_ms"]["p50"] == pytest.approx(0.2280000001192093)
    assert (tmp_path / "msit.log").is_file()


def test_msit_failure_is_a_stage_error(tmp_path, monkeypatch):
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    sampler = NpuSmiSampler(0, interval_s=0.05)
    with pytest.raises(StageError, match="not found"):
        ascend_device.run_msit_on_device(tmp_path / "missing.om", 10, 1, sampler=sampler, idle_seconds=0)


# --------------------------------------------------------------------------- FP16 preflight


def _fp16_fragile_model(path: Path) -> None:
    """x[4] -> g0 (identity, benign) -> g1 (+2048) -> g2 (-2048) -> logits. At 2048 FP16 steps by 2,
    so g1 and g2 in FP16 erase the small differences between the logits; g0 in FP16 does not."""
    eye = np.eye(4, dtype=np.float32)
    inits = [onnx.numpy_helper.from_array(eye, "w0"), onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b0"),
             onnx.numpy_helper.from_array(eye, "w1"), onnx.numpy_helper.from_array(np.full(4, 2048, np.float32), "b1"),
             onnx.numpy_helper.from_array(eye, "w2"), onnx.numpy_helper.from_array(np.full(4, -2048, np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], name="g0"),
             helper.make_node("Gemm", ["h0", "w1", "b1"], ["h1"], name="g1"),
             helper.make_node("Gemm", ["h1", "w2", "b2"], ["y"], name="g2")]
    g = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def _fragile_data(n: int, seed: int):
    x = np.random.default_rng(seed).uniform(0, 0.9, (n, 4)).astype(np.float32)
    return x, x.argmax(1)


def test_fp16_preflight_finds_the_layers_and_keeps_them(tmp_path):
    _fp16_fragile_model(tmp_path / "m.onnx")
    x, y = _fragile_data(300, 0)
    xv, _ = _fragile_data(64, 1)
    r = fp16_preflight(tmp_path / "m.onnx", "allow_fp32_to_fp16", x, y, xv, budget_points=0.5)
    assert r["fp32_accuracy"] == 1.0
    assert r["fp16_accuracy"] < 0.6 and not r["within_budget"]  # all three Gemms in FP16 break it
    assert sorted(r["keep_fp32"]) == ["g1", "g2"]  # g0 is harmless in FP16 and stays there
    assert r["accuracy_with_keep"] == 1.0 and r["within_budget_with_keep"]
    assert [s["node"] for s in r["sensitivity"]][-1] == "g0"
    # must_keep_origin_dtype runs FP32: nothing to simulate, nothing kept.
    keep = fp16_preflight(tmp_path / "m.onnx", "must_keep_origin_dtype", x, y, xv, budget_points=0.5)
    assert keep["keep_fp32"] == [] and keep["fp16_accuracy"] == keep["fp32_accuracy"]


def test_fp16_preflight_chooses_on_validation_never_on_test(tmp_path):
    """Test data only reports: poisoned test labels (permuted) and test inputs (other samples) leave the
    choice -- whether to keep, which layers, when to stop -- exactly as it was; only the reported accuracies move.
    (The former loop stopped on test accuracy: with permuted labels FP16 cost ~0 points and it kept nothing.)"""
    _fp16_fragile_model(tmp_path / "m.onnx")
    x, y = _fragile_data(300, 0)
    xv, _ = _fragile_data(64, 1)
    clean = fp16_preflight(tmp_path / "m.onnx", "allow_fp32_to_fp16", x, y, xv, budget_points=0.5)
    rng = np.random.default_rng(3)
    x_other, _ = _fragile_data(300, 9)
    poisoned = fp16_preflight(tmp_path / "m.onnx", "allow_fp32_to_fp16", x_other, rng.permutation(y), xv,
                              budget_points=0.5)
    assert clean["keep_fp32"] and poisoned["keep_fp32"] == clean["keep_fp32"]
    for k in ("within_budget", "within_budget_with_keep", "val_agreement", "val_agreement_with_keep", "sensitivity"):
        assert poisoned[k] == clean[k], k
    assert poisoned["fp32_accuracy"] < 0.5 < clean["fp32_accuracy"]  # the poison reached what is reported
    assert clean["choice"] == {"split": "validation", "samples": 64, "metric": "top-1 agreement with fp32"}
    # the validation samples do steer it: on samples whose winner survives FP16's step of 2 at 2048 (one input
    # of 1.5, the rest 0) FP16 agrees with FP32, and nothing is kept
    easy = np.zeros((64, 4), np.float32)
    easy[np.arange(64), np.arange(64) % 4] = 1.5
    calm = fp16_preflight(tmp_path / "m.onnx", "allow_fp32_to_fp16", x, y, easy, budget_points=0.5)
    assert calm["within_budget"] and calm["keep_fp32"] == [] and calm["fp16_accuracy"] == clean["fp16_accuracy"]
    with pytest.raises(DataError):
        fp16_preflight(tmp_path / "m.onnx", "allow_fp32_to_fp16", x, y, xv[:0], budget_points=0.5)


def test_bundle_writes_keep_dtype_that_convert_sh_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no atc: the bundle alone
    _fp16_fragile_model(tmp_path / "m.onnx")
    x, y = _fragile_data(300, 0)
    xv, _ = _fragile_data(64, 1)
    card = _card(parity__atol=1e-4)
    ref = x[:8] + 0.0  # the fragile model computes the identity in FP32
    man = ascend.write_bundle(tmp_path / "m.onnx", tmp_path / "out", card, "x", [1, 4], x[:8], ref,
                              evaluation=(x, y, xv), budget_points=0.5, calib=x[:40])
    b = tmp_path / "out" / "ascend"
    assert (b / "keep_dtype.cfg").read_text().split() == man["precision_preflight"]["keep_fp32"]
    assert "--keep_dtype=keep_dtype.cfg" in (b / "convert.sh").read_text()
    assert man["accuracy"]["static_onnx_fp32"] == 1.0 and man["accuracy"]["measured_on"] == "host"
    calib = np.load(b / "amct" / "calibration.npy")
    assert calib.shape == (32, 4) and "amct.save_model" in (b / "amct" / "calibrate.py").read_text()
    compile(b.joinpath("amct", "calibrate.py").read_text(), "calibrate.py", "exec")  # valid Python
    assert "amct/calibrate.py" in (b / "README.txt").read_text()


def test_bf16_modes_refused_on_310p_up_front():
    with pytest.raises(UserError, match="not available on Ascend310P3"):
        ascend.check_target(_card(ascend__precision_mode="allow_fp32_to_bf16"))
    assert ascend.check_target(_card("ascend-910b", ascend__precision_mode="allow_fp32_to_bf16"))


# --------------------------------------------------------------------------- token ids + check_outputs.py


class _TinyText(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_token_id_bundle_and_check_outputs_compares_every_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    torch.manual_seed(0)
    m = _TinyText().eval()
    ids = torch.randint(0, 50, (6, 8))
    torch.onnx.export(m, ids[:1], str(tmp_path / "t.onnx"), dynamo=False, input_names=["input"], opset_version=13)
    with torch.no_grad():
        ref = m(ids).numpy()
    y = ref.argmax(1)
    man = ascend.write_bundle(tmp_path / "t.onnx", tmp_path / "out", _card(), "input", [1, 8], ids.numpy(), ref,
                              evaluation=(ids.numpy(), y, ids.numpy()))
    b = tmp_path / "out" / "ascend"
    assert man["input"]["dtype"] == "int64"
    assert (b / "inputs" / "sample_0.bin").stat().st_size == 8 * 8
    assert man["accuracy"]["static_onnx_fp32"] == 1.0
    out = tmp_path / "npu_out"
    out.mkdir()
    samples = man["samples"]
    assert len(samples) == 4
    for i, s in enumerate(samples):
        np.save(out / f"sample_{i}_0.npy", np.asarray(s["expected"], dtype=np.float16))  # NPU FP16 output
    run = lambda: subprocess.run([sys.executable, str(b / "check_outputs.py"), str(out)], capture_output=True, text=True)
    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["compared"] == 4
    bad = np.asarray(samples[3]["expected"], dtype=np.float32) + 1.0
    np.save(out / "sample_3_0.npy", bad)  # only the LAST sample is wrong: it must still be caught
    r = run()
    assert r.returncode == 1 and [s["ok"] for s in json.loads(r.stdout)["samples"]] == [True, True, True, False]
    (out / "sample_2_0.npy").unlink()
    r = run()
    assert r.returncode == 1 and "no output file" in r.stdout


# --------------------------------------------------------------------------- end to end: bundle -> atc -> msit


def test_bundle_converted_and_measured_on_the_fake_device(tmp_path, monkeypatch):
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    _fp16_fragile_model(tmp_path / "m.onnx")
    x, _ = _fragile_data(8, 0)
    card = _card(ascend__loop=100, ascend__warmup=10, ascend__idle_seconds=0.3, ascend__power_interval_s=0.05)
    man = ascend.write_bundle(tmp_path / "m.onnx", tmp_path / "out", card, "x", [1, 4], x, x + 0.0)
    b = tmp_path / "out" / "ascend"
    assert man["atc"]["status"] == "ok" and (b / "model.om").read_bytes().startswith(b"FAKE-OM")
    dev = ascend_device.profile_on_device(b, card.ascend)
    assert dev["status"] == "ok" and dev["device"] == "Ascend310P3"
    assert dev["energy"]["method"] == "npu-smi" and dev["energy"]["joules_per_inference"] > 0
    assert dev["latency_ms"]["p50"] == pytest.approx(0.2280000001192093)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert ascend_device.profile_on_device(b, card.ascend)["status"] == "not run"
