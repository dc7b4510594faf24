"""Profiler: statistics, the worker (in process and as a subprocess), energy samplers, FLOPs, roofline."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.config import DeviceConfig
from edgekd.errors import StageError, UserError
from edgekd.profile.measure import energy
from edgekd.profile.measure.flops import onnx_flops, roofline
from edgekd.profile.runner import aggregate, interleaved_profile, profile_model
from edgekd.profile.measure.stats import summarize

DATA = Path(__file__).resolve().parents[1] / "fixtures"
DEVICE = DeviceConfig(name="test-cpu", peak_gflops=100.0, mem_bandwidth_gbs=10.0, active_power_watts=7.5)
QUICK = {"warmup_runs": 3, "warmup_seconds": 0.0, "min_runs": 30, "min_seconds": 0.05, "max_seconds": 2.0,
         "batch_sweep": [1, 4], "throughput_batch": 4, "throughput_seconds": 0.05, "threads": 1}


# --------------------------------------------------------------------------- stats


def test_summarize_known_samples():
    s = summarize([float(x) for x in range(10, 0, -1)])  # 10..1, unsorted on purpose
    assert s["n"] == 10 and s["min"] == 1.0
    assert s["p50"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(9.1)
    assert s["p99"] == pytest.approx(9.91)
    assert s["mean"] == pytest.approx(5.5)
    assert s["std"] == pytest.approx(math.sqrt(8.25))


def test_summarize_matches_numpy_linear_percentiles():
    x = np.random.default_rng(3).lognormal(size=257)
    s = summarize(x.tolist())
    for q in (50, 90, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(x, q)), rel=1e-12)
    assert s["std"] == pytest.approx(float(np.std(x)), rel=1e-12)
    assert summarize([2.5]) == {"min": 2.5, "p50": 2.5, "p90": 2.5, "p99": 2.5, "mean": 2.5, "std": 0.0, "n": 1}
    with pytest.raises(StageError):
        summarize([])


# --------------------------------------------------------------------------- worker and runner


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """small_cnn as a state_dict, a dynamic-batch ONNX file and a static-batch ONNX file."""
    import torch

    from edgekd.zoo import build

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    m = build("small_cnn").eval()
    torch.save(m.state_dict(), d / "s.pt")
    x = torch.randn(1, 1, 28, 28)
    torch.onnx.export(m, x, str(d / "dyn.onnx"), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    torch.onnx.export(m, x, str(d / "static.onnx"), dynamo=False, input_names=["input"])
    return d


def test_worker_onnx_in_process(models, tmp_path):
    from edgekd.profile.worker import run_spec

    samples = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", samples)
    r = run_spec({"kind": "onnx", "path": str(models / "dyn.onnx"), "input_shape": [1, 1, 28, 28],
                  "input_file": str(tmp_path / "x.npy"), "device": DEVICE.model_dump(), "energy": "none", **QUICK})
    assert r["runtime"] == "onnxruntime" and r["input_source"] == "file:x.npy"
    lat = r["latency_ms"]
    assert r["samples"] == lat["n"] >= QUICK["min_runs"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert set(r["throughput_sweep"]) == {"1", "4"} and r["throughput_per_s"] == r["throughput_sweep"]["4"] > 0
    assert 0 < r["rss_before_load_bytes"] <= r["peak_rss_bytes"]
    assert r["peak_rss_bytes"] >= r["rss_after_load_bytes"]
    assert r["peak_rss_delta_bytes"] == r["peak_rss_bytes"] - r["rss_before_load_bytes"]
    assert r["cpu_seconds_per_inference"] > 0
    # No counter was asked for: the energy figure must be the labelled estimate, CPU time x power.
    assert r["energy_measured"] is None
    assert r["energy"]["method"] == energy.ESTIMATE_METHOD
    assert r["energy"]["joules_per_inference"] == pytest.approx(r["cpu_seconds_per_inference"] * 7.5)


def test_worker_rejects_wrong_input_file_shape(models, tmp_path):
    from edgekd.profile.worker import run_spec

    np.save(tmp_path / "bad.npy", np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(UserError, match="expected"):
        run_spec({"kind": "onnx", "path": str(models / "dyn.onnx"), "input_shape": [1, 1, 28, 28],
                  "input_file": str(tmp_path / "bad.npy"), **QUICK})


def test_worker_skips_batches_of_a_static_onnx_input(models):
    from edgekd.profile.worker import run_spec

    # No input_shape: the static graph's own shape [1, 1, 28, 28] is used.
    r = run_spec({"kind": "onnx", "path": str(models / "static.onnx"), "energy": "none", **QUICK})
    assert r["input_shape"] == [1, 1, 28, 28]
    assert list(r["throughput_sweep"]) == ["1"] and "4" in r["throughput_skipped"]
    assert r["throughput_batch"] == 1 and r["throughput_per_s"] == r["throughput_sweep"]["1"]


def test_interleaved_subprocess_profile_onnx_and_torch(models, tmp_path):
    order: list[tuple[str, int]] = []
    specs = {
        "student-onnx": {"kind": "onnx", "path": str(models / "dyn.onnx"), "input_shape": [1, 1, 28, 28], **QUICK},
        "student-torch": {"kind": "torch", "path": str(models / "s.pt"), "arch": "small_cnn", "kwargs": {},
                          "input_shape": [1, 1, 28, 28], **QUICK},
    }
    res = interleaved_profile(specs, repeats=2, workdir=tmp_path, progress=lambda n, r, t: order.append((n, r)))
    # Repeat 1 of every model runs before repeat 2 of any.
    assert order == [("student-onnx", 1), ("student-torch", 1), ("student-onnx", 2), ("student-torch", 2)]
    assert res["student-onnx"]["runtime"] == "onnxruntime" and res["student-torch"]["runtime"] == "torch"
    for r in res.values():
        assert len(r["repeats"]) == 2 and r["latency_ms"]["p50"] in r["repeats"]
        spread = (max(r["repeats"]) - min(r["repeats"])) / float(np.median(r["repeats"]))
        assert r["spread"] == pytest.approx(spread) and r["noisy"] == (spread > 0.05)
    # Each repeat was its own process: two result files per model.
    assert len(list(tmp_path.glob("*.result.json"))) == 4


def test_aggregate_takes_median_repeat_and_max_memory():
    def run(p50: float, rss: int, tp: float) -> dict:
        return {"latency_ms": {"p50": p50, "p90": p50 * 2}, "cpu_seconds_per_inference": p50 / 1e3,
                "throughput_per_s": tp, "throughput_sweep": {"1": tp / 2, "8": tp}, "peak_rss_bytes": rss,
                "peak_rss_delta_bytes": rss - 10, "rss_after_load_bytes": rss - 5, "wall_seconds": 1.0}

    agg = aggregate("m", [run(1.0, 100, 10.0), run(1.3, 300, 30.0), run(1.1, 200, 20.0)])
    assert agg["latency_ms"] == {"p50": 1.1, "p90": 2.2}
    assert agg["repeats"] == [1.0, 1.3, 1.1]
    assert agg["spread"] == pytest.approx(0.3 / 1.1) and agg["noisy"] is True
    assert agg["peak_rss_bytes"] == 300 and agg["peak_rss_delta_bytes"] == 290
    assert agg["throughput_per_s"] == 20.0 and agg["throughput_sweep"] == {"1": 10.0, "8": 20.0}
    calm = aggregate("m", [run(1.0, 1, 1.0), run(1.04, 1, 1.0)])
    assert calm["noisy"] is False and calm["latency_ms"]["p50"] == 1.0  # even count: the lower middle


def test_failing_worker_raises_stage_error_naming_model(tmp_path):
    spec = {"kind": "onnx", "path": str(tmp_path / "nope.onnx"), "input_shape": [1, 4], "name": "ghost", **QUICK}
    with pytest.raises(StageError) as ei:
        profile_model(spec, repeats=1, workdir=tmp_path)
    assert "ghost" in ei.value.message and "ONNX model not found" in ei.value.message
    assert ei.value.exit_code == 2  # the worker's user error keeps its exit code


# --------------------------------------------------------------------------- energy


def test_parse_npu_smi_power_recorded_and_variants():
    assert energy.parse_npu_smi_power((DATA / "npu_smi_power.txt").read_text()) == 13.4
    assert energy.parse_npu_smi_power("\tNPU Real-time Power(W)         : 21.7\n") == 21.7  # 310P wording
    with pytest.raises(StageError):  # a rating is not a reading
        energy.parse_npu_smi_power("\tRated Power Dissipation(W)     : 8.0\n")
    with pytest.raises(StageError):
        energy.parse_npu_smi_power("\tPower Dissipation(W)           : NA\n")


def test_integrate_trapezoid_exact():
    assert energy.integrate_trapezoid([(0.0, 10.0), (1.0, 20.0), (3.0, 20.0)]) == pytest.approx(55.0)
    assert energy.integrate_trapezoid([(1.0, 5.0)]) == 0.0


def test_npu_smi_sampler_integrates_constant_power():
    s = energy.NpuSmiSampler(interval_s=0.01, reader=lambda: "\tPower Dissipation(W)           : 10.0\n")
    assert s.available()
    t0 = time.perf_counter()
    s.start()
    time.sleep(0.15)
    joules = s.stop()
    outer = time.perf_counter() - t0
    assert 10.0 * (outer - 0.05) <= joules <= 10.0 * outer


def test_rapl_sums_packages_handles_wrap_and_skips_subzones(tmp_path):
    def zone(name: str, uj: int, rng: int = 1_000_000_000) -> Path:
        z = tmp_path / name
        z.mkdir(exist_ok=True)
        (z / "energy_uj").write_text(f"{uj}\n")
        (z / "max_energy_range_uj").write_text(f"{rng}\n")
        return z

    zone("intel-rapl:0", 1_000_000_000 - 500_000)
    zone("intel-rapl:1", 1_000_000)
    zone("intel-rapl:0:0", 0)  # cores, already inside package 0
    s = energy.RaplSampler(root=tmp_path)
    assert s.available() and [z.name for z in s.zones()] == ["intel-rapl:0", "intel-rapl:1"]
    s.start()
    zone("intel-rapl:0", 1_500_000)  # wrapped: 0.5 J before the wrap + 1.5 J after
    zone("intel-rapl:1", 4_000_000)
    zone("intel-rapl:0:0", 100_000_000)
    assert s.stop() == pytest.approx(2.0 + 3.0)
    assert not energy.RaplSampler(root=tmp_path / "absent").available()


def test_nvml_unavailable_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert energy.NvmlSampler().available() is False


def _nvml_here() -> bool:
    try:
        return energy.NvmlSampler().available()
    except Exception:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not _nvml_here(), reason="no NVIDIA driver with an NVML energy counter on this host")
def test_nvml_reads_gpu_energy_that_grows_with_work():
    """On a real GPU: two seconds of matrix products cost joules within the board's power range."""
    import time

    import torch

    if not torch.cuda.is_available():
        pytest.skip("NVML answers but torch sees no CUDA device")
    import pynvml

    pynvml.nvmlInit()
    limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(pynvml.nvmlDeviceGetHandleByIndex(0)) / 1000.0
    s = energy.NvmlSampler(device_index=0)
    a = torch.randn(4096, 4096, device="cuda")
    s.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        for _ in range(20):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    joules = s.stop()
    watts = joules / secs
    # Busy for 2 s: more than an idle board's few tens of watts can explain is not asked (clocks vary),
    # but the counter must move, and the mean power cannot exceed the board's enforced limit by much.
    assert joules > 0 and 10.0 < watts < 1.2 * limit_w, (joules, secs, limit_w)


def test_estimate_is_labelled_and_never_measured():
    est = energy.estimate_energy(0.002, DEVICE)
    assert est["joules_per_inference"] == pytest.approx(0.015)
    assert est["method"] == "estimate-cpu-time-x-power" and est["method"] not in energy.MEASURED_METHODS
    assert "7.5 W" in est["assumptions"]
    assert energy.measured_or_estimate(0.002, DEVICE)["method"] == est["method"]
    good = energy.measured_result("rapl", joules=3.0, inferences=1000, seconds=2.0)
    got = energy.measured_or_estimate(0.002, DEVICE, good)
    assert got["method"] == "rapl" and got["joules_per_inference"] == pytest.approx(0.003)
    # A counter that gave nothing usable, or a caller passing an estimate off as measured: estimate label.
    for bad in ({"method": "rapl", "joules_per_inference": 0.0}, {"method": "nvml", "joules_per_inference": float("nan")},
                {"method": "measured", "joules_per_inference": 0.01}):
        out = energy.measured_or_estimate(0.002, DEVICE, bad)
        assert out["method"] == energy.ESTIMATE_METHOD and out["joules_per_inference"] == pytest.approx(0.015)


def test_pick_sampler_choices():
    assert energy.pick_sampler("none") is None
    with pytest.raises(UserError, match="unknown energy sampler"):
        energy.pick_sampler("watts-meter")


# --------------------------------------------------------------------------- FLOPs and roofline


def _tiny_graph(path: Path) -> Path:
    """Conv 3->4 (3x3, pad 1) on 8x8, depthwise Conv (stride 2), Flatten, Gemm 64->10, MatMul 10->5."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("W1", (4, 3, 3, 3)), ("B1", (4,)), ("W2", (4, 1, 3, 3)), ("W3", (10, 64)), ("B3", (10,)), ("W4", (10, 5))]]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "W2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "W4"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# Hand count at batch 1: conv1 4*8*8 outputs x 3*3*3 = 6912; depthwise 4*4*4 x 1*3*3 = 576;
# Gemm 64*10 = 640; MatMul 10*5 = 50.
TINY_MACS = 6912 + 576 + 640 + 50
TINY_PARAMS = 108 + 4 + 36 + 640 + 10 + 50


def test_onnx_flops_hand_counted(tmp_path):
    r = onnx_flops(_tiny_graph(tmp_path / "tiny.onnx"))
    assert r["macs"] == TINY_MACS and r["flops"] == 2 * TINY_MACS and r["params"] == TINY_PARAMS
    assert r["by_op"] == {"Conv": 6912 + 576, "Gemm": 640, "MatMul": 50} and r["unresolved"] == 0


def test_onnx_flops_counts_quantized_graphs_like_float(tmp_path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    src = _tiny_graph(tmp_path / "tiny.onnx")
    quantize_dynamic(str(src), str(tmp_path / "dyn.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    dyn_ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn.onnx")).graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= dyn_ops
    assert onnx_flops(tmp_path / "dyn.onnx")["macs"] == TINY_MACS
    qdq = onnx_flops(tmp_path / "qdq.onnx")
    assert qdq["macs"] == TINY_MACS and qdq["params"] == TINY_PARAMS  # scales/zero points are not params


@pytest.mark.parametrize("declared", [True, False])
def test_onnx_flops_matmulnbits(tmp_path, declared):
    """INT4 weight-only MatMulNBits is counted, and so is the MatMul it feeds (its output shape comes from
    onnxruntime's symbolic inference), with or without the com.microsoft import (NNCF leaves it out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n, m = 32, 8, 4
    b = numpy_helper.from_array(np.zeros((n, 1, k // 2), np.uint8), "B")  # 4-bit: 2 weights per byte
    scales = numpy_helper.from_array(np.ones((n,), np.float32), "S")
    w = numpy_helper.from_array(np.ones((n, m), np.float32), "W")
    nodes = [helper.make_node("MatMulNBits", ["a", "B", "S"], ["h"], domain="com.microsoft", K=k, N=n, bits=4, block_size=32),
             helper.make_node("MatMul", ["h", "W"], ["y"])]
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, m])], [b, scales, w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if declared else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(tmp_path / "nbits.onnx"))
    r = onnx_flops(tmp_path / "nbits.onnx")
    assert r["by_op"] == {"MatMulNBits": 3 * k * n, "MatMul": 3 * n * m} and r["complete"], r
    assert r["params"] == k * n + n * m


def test_onnx_flops_keeps_the_models_fixed_dims_and_pins_the_symbolic_ones(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((6, 5), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "seq", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, "seq", 5])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mm.onnx"))
    r = onnx_flops(tmp_path / "mm.onnx", shape=[1, 7, 6])  # the static batch 4 is the model's: it wins
    assert r["input_shapes"] == {"x": [4, 7, 6]} and r["macs"] == 4 * 7 * 6 * 5 and r["complete"]
    open_seq = onnx_flops(tmp_path / "mm.onnx")
    assert open_seq["input_shapes"] == {"x": [4, "seq", 6]} and open_seq["unresolved"] == 1
    with pytest.raises(UserError, match="rank"):
        onnx_flops(tmp_path / "mm.onnx", {"x": [1, 7]})


def test_onnx_flops_missing_file(tmp_path):
    with pytest.raises(UserError):
        onnx_flops(tmp_path / "missing.onnx")


def test_roofline_memory_and_compute_bound():
    mem = roofline(flops=2e6, bytes_moved=1e6, latency_ms=1.0, device=DEVICE)  # intensity 2 < ridge 10
    assert mem["achieved_gflops"] == pytest.approx(2.0) and mem["efficiency"] == pytest.approx(0.02)
    assert mem["arithmetic_intensity"] == pytest.approx(2.0) and mem["ridge_point"] == pytest.approx(10.0)
    assert mem["bound"] == "memory" and mem["attainable_gflops"] == pytest.approx(20.0)
    comp = roofline(flops=5e7, bytes_moved=1e6, latency_ms=1.0, device=DEVICE)  # intensity 50
    assert comp["bound"] == "compute" and comp["attainable_gflops"] == pytest.approx(100.0)
    assert comp["efficiency"] == pytest.approx(0.5)
    with pytest.raises(StageError):
        roofline(1e6, 1e6, 0.0, DEVICE)


def test_subprocess_isolation_parent_memory_does_not_leak_into_measurement(tmp_path):
    """A bloated parent (or a leaky model profiled earlier) must not change the next worker's
    peak RSS: ru_maxrss survives fork+exec on Linux, so the worker must not use it."""
    import numpy as np
    import torch

    from edgekd import zoo
    from edgekd.export.onnx import export_onnx
    from edgekd.profile.runner import profile_model

    m = zoo.build("mlp", hidden=[8]).eval()
    path = export_onnx(m, torch.randn(1, 64), tmp_path / "m.onnx", opset=17)
    spec = {"kind": "onnx", "path": str(path), "input_shape": [1, 64], "threads": 1, "warmup_runs": 5,
            "warmup_seconds": 0.0, "min_runs": 20, "min_seconds": 0.0, "max_seconds": 2.0, "batch_sweep": [1]}
    first = profile_model(spec, repeats=1, workdir=tmp_path)
    hog = np.ones(400 * 2**20 // 8)  # 400 MiB resident in the parent
    hog[::4096] += 1.0
    second = profile_model(spec, repeats=1, workdir=tmp_path)
    del hog
    assert second["peak_rss_bytes"] < 300 * 2**20, "worker reported the parent's memory"
    assert abs(second["peak_rss_bytes"] - first["peak_rss_bytes"]) < 0.2 * first["peak_rss_bytes"]


# --------------------------------------------------------------------------- FLOPs vs torch, host peak


def _torch_flops(model, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def test_fp32_flops_of_a_tiny_cnn_match_torch(tmp_path):
    import torch

    from edgekd import zoo
    from edgekd.export.onnx import export_onnx

    torch.manual_seed(0)
    model = zoo.build("resnet_cnn", stem_width=8, widths=[8, 16]).eval()
    x = torch.randn(1, 1, 28, 28)
    export_onnx(model, x, tmp_path / "cnn.onnx", opset=17)
    ours = onnx_flops(tmp_path / "cnn.onnx")
    want = _torch_flops(model, x)
    assert ours["complete"] and ours["unresolved"] == 0
    # torch counts conv/linear as 2*MACs without bias, as we do; BatchNorm is folded away in ONNX.
    assert ours["flops"] == pytest.approx(want, rel=0.01), (ours["by_op"], want)


def _tiny_bert(tmp_path, seq: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from edgekd.export.onnx import export_onnx

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    cfg._attn_implementation = "eager"  # FlopCounterMode does not count the CPU sdpa kernel

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.m = BertForSequenceClassification(cfg)

        def forward(self, ids):
            return self.m(input_ids=ids).logits

    model = Logits().eval()
    path = tmp_path / "bert.onnx"
    export_onnx(model, torch.randint(0, 100, (1, seq)), path, opset=17, dynamic_sequence=True)
    return model, path


def test_symbolic_sequence_bert_is_counted_at_the_profiled_length(tmp_path):
    import onnx
    import torch

    model, path = _tiny_bert(tmp_path, seq=16)
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]  # the graph itself has no sequence length
    for seq in (16, 48):
        ours = onnx_flops(path, shape=[1, seq])
        want = _torch_flops(model, torch.randint(0, 100, (1, seq)))
        assert ours["complete"] and ours["input_shapes"] == {"input": [1, seq]}
        assert ours["flops"] == pytest.approx(want, rel=0.01), (seq, ours["by_op"], want)
    assert onnx_flops(path, {"input": [1, 48]})["flops"] == onnx_flops(path, shape=[1, 48])["flops"]
    # Left symbolic, the count is incomplete and says so; no efficiency is derived from it.
    open_seq = onnx_flops(path)
    assert not open_seq["complete"] and open_seq["unresolved"] > 0
    from edgekd.profile.measure.flops import host_roofline

    count, rf = host_roofline(path, 1.0, {"peak_gflops": 100.0, "method": "sgemm-calibration"})
    assert not count["complete"] and rf["efficiency"] is None and rf["bound"] is None
    count, rf = host_roofline(path, 1.0, {"peak_gflops": 100.0, "method": "sgemm-calibration"}, shape=[1, 16])
    assert rf["efficiency"] == pytest.approx(count["flops"] / 1e-3 / 1e9 / 100.0)
    assert rf["peak_method"] == "sgemm-calibration" and rf["peak_gflops"] == 100.0
    assert host_roofline(path, 1.0, None, shape=[1, 16])[1] is None  # no measured peak: no roofline


def test_roofline_without_a_count_gives_no_efficiency():
    rf = roofline(None, 1e6, 1.0, DEVICE)
    assert rf["efficiency"] is None and rf["achieved_gflops"] is None and rf["bound"] is None
    assert roofline(0, 1e6, 1.0, DEVICE)["efficiency"] is None  # 0 MACs is "not counted", not 0% of peak
    m = roofline(2e6, 1e6, 1.0, peak_gflops=50.0, peak_method="sgemm-calibration")
    assert m["efficiency"] == pytest.approx(0.04) and m["bound"] is None and m["peak_method"] == "sgemm-calibration"


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_cpu_info_reads_model_and_isa_flags():
    from edgekd.profile.measure.host import cpu_info

    x = cpu_info(XEON)
    assert x["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert {k: x["flags"][k] for k in ("avx2", "avx512f", "avx512_vnni", "amx")} == {
        "avx2": True, "avx512f": True, "avx512_vnni": True, "amx": True}
    e = cpu_info(EPYC)
    assert e["model"] == "AMD EPYC 9R14"
    assert {k: e["flags"][k] for k in ("avx2", "avx512f", "avx512_vnni", "amx")} == {
        "avx2": True, "avx512f": False, "avx512_vnni": False, "amx": False}
    assert cpu_info("")["flags"]["avx2"] is None  # unknown is not "absent"
    assert cpu_info()["model"]  # this host


def test_host_peak_is_measured_in_a_pinned_worker(tmp_path):
    from edgekd.profile.runner import measure_host_peak

    r = measure_host_peak(1, tmp_path, seconds=0.2)
    assert r["method"] == "sgemm-calibration" and r["threads"] == 1 and r["calls"] >= 4
    # A real FP32 core does between ~1 and a few hundred GFLOP/s; 0 or inf would mean a broken timer.
    assert 1.0 < r["peak_gflops"] < 2000.0
    assert set(r["cpu"]["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "amx"}
