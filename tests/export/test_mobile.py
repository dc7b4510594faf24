"""Mobile target: .pte (ExecuTorch/XNNPACK, fp32 + int8), .ort (ORT Mobile), the bundle, adb profiling.

The .pte tests skip when executorch is not installed (it is the optional `mobile` extra); the
.ort, bundle-without-executorch, parsing and adb tests always run.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.cards import load_target
from edgekd.errors import StageError, TargetUnavailable, UserError
from edgekd.targets.mobile import bundle as mobile
from edgekd.export.onnx import export_onnx
from edgekd.runtimes.ort import run_onnx
from edgekd.targets.mobile.ort_format import parse_required_operators, to_ort_format
from edgekd.zoo import build

HAS_ET = importlib.util.find_spec("executorch") is not None
needs_et = pytest.mark.skipif(not HAS_ET, reason="executorch not installed (optional extra: pip install '.[mobile]')")
N_CLASSES = 4

# Printed in the format of onnxruntime/test/perftest/performance_runner.cc (Run() and DumpToFile()):
# what `onnxruntime_perf_test -e cpu -m times -r 100 -x 1 -I -s model.ort` prints.
ORT_PERF_TEST_OUTPUT = """\
Session creation time cost: 0.0213 s
First inference time cost: 2 ms
Total inference time cost: 0.0841 s
Total inference requests: 100
Average inference time cost: 0.841 ms
Total inference run time: 0.0868 s
Number of inferences per second: 1152.07
Avg CPU usage: 24 %
Peak working set size: 14213120 bytes
Avg CPU usage:24
Peak working set size:14213120
Runs:100
Min Latency: 0.000771 s
Max Latency: 0.00131 s
P50 Latency: 0.000826 s
P90 Latency: 0.000902 s
P95 Latency: 0.000955 s
P99 Latency: 0.00124 s
P999 Latency: 0.00131 s
"""

# ExecuTorch executor_runner log lines (examples/portable/executor_runner), as logcat shows them.
EXECUTOR_RUNNER_OUTPUT = """\
I 00:00:00.004 executorch:executor_runner.cpp:180] Model file model_fp32.pte is loaded.
I 00:00:00.010 executorch:executor_runner.cpp:420] Iteration 1 of 4: 3.500000 ms
I 00:00:00.011 executorch:executor_runner.cpp:420] Iteration 2 of 4: 1.000000 ms
I 00:00:00.012 executorch:executor_runner.cpp:420] Iteration 3 of 4: 1.200000 ms
I 00:00:00.013 executorch:executor_runner.cpp:420] Iteration 4 of 4: 1.400000 ms
I 00:00:00.013 executorch:executor_runner.cpp:430] Model executed successfully 4 time(s) in 7.100000 ms.
"""


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noisy textures, one per class (horizontal/vertical stripes, checkerboard, flat), which a
    conv + global-pool CNN separates with clear margins after a few steps."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:28, 0:28]
    patterns = np.stack([(r // 2) % 2, (c // 2) % 2, ((r // 2) + (c // 2)) % 2, np.full((28, 28), 0.5)]).astype(np.float32)
    y = rng.integers(0, N_CLASSES, n)
    x = rng.normal(0, 0.4, (n, 1, 28, 28)).astype(np.float32) + 1.5 * patterns[y][:, None]
    return x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    torch.manual_seed(0)
    model = build("small_cnn", widths=[4, 8], num_classes=N_CLASSES)
    x, y = _blobs(512, 0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for step in range(40):
        i = (step * 64) % 512
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[i:i + 64])), torch.from_numpy(y[i:i + 64]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x_test, y_test = _blobs(64, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    assert (ref.argmax(1) == y_test).mean() > 0.8, "the tiny model did not learn the blobs: the int8 test would mean nothing"
    d = tmp_path_factory.mktemp("mobile")
    onnx_path = export_onnx(model, torch.from_numpy(x_test[:1]), d / "student.onnx", opset=17)
    return {"model": model, "x_train": x, "x_test": x_test, "y_test": y_test, "ref": ref, "onnx": onnx_path, "dir": d}


@pytest.fixture(scope="module")
def bundle(trained) -> tuple[Path, dict]:
    if not HAS_ET:
        pytest.skip("executorch not installed (optional extra: pip install '.[mobile]')")
    out = trained["dir"] / "convert"
    info = mobile.write_mobile_bundle(out, trained["model"], torch.from_numpy(trained["x_test"][:1]), trained["onnx"],
                                      trained["x_train"][:64], trained["x_test"], [f"c{i}" for i in range(N_CLASSES)],
                                      {"mean": 0.0, "std": 1.0, "scale": 1.0}, load_target("mobile"),
                                      timing_runs=5, timing_warmup=1,
                                      evaluation=(trained["x_test"], trained["y_test"]))
    return out / "mobile", info


@needs_et
def test_fp32_pte_matches_torch(trained, bundle):
    from edgekd.targets.mobile.executorch import run_pte

    got = run_pte(bundle[0] / "model_fp32.pte", trained["x_test"])
    assert got.shape == trained["ref"].shape
    assert np.abs(got - trained["ref"]).max() <= 1e-4
    meta = json.loads((bundle[0] / "metadata.json").read_text())["artifacts"]["model_fp32.pte"]
    assert meta["delegated_nodes"] > 0 and meta["delegated_fraction"] > 0.5  # XNNPACK really runs the convs


_TIME_AFTER_RUN = """
import sys, numpy as np
from edgekd.targets.mobile.executorch import run_pte, time_pte
x = np.random.rand(8, 1, 28, 28).astype(np.float32)
for f in sys.argv[1:]:
    run_pte(f, x)
    time_pte(f, x[:1], runs=30, warmup=3, threads=1)
    run_pte(f, x)  # the pool is back to its default: programs loaded now must still run
print("ok")
"""


@needs_et
def test_threadpool_pinning_never_crashes_the_process(bundle, tmp_path):
    """Resetting ExecuTorch's threadpool under a loaded XNNPACK method left it a dangling pool: with
    the fashion-cnn student the process died with SIGSEGV or hung about every other run. Several
    fresh processes must all finish, quickly."""
    import os
    import subprocess
    import sys

    from edgekd.targets.mobile.executorch import export_pte

    torch.manual_seed(0)
    student = build("small_cnn", widths=[16, 32, 96], num_classes=10).eval()  # the fashion-cnn student's size
    ptes = [str(bundle[0] / "model_fp32.pte"), str(tmp_path / "student.pte")]
    export_pte(student, torch.randn(1, 1, 28, 28), Path(ptes[1]))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for attempt in range(4):
        try:
            r = subprocess.run([sys.executable, "-c", _TIME_AFTER_RUN, *ptes], capture_output=True, text=True,
                               env=env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {attempt}: hung (a deadlock on a dangling threadpool)")
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), f"run {attempt}: rc {r.returncode} {r.stderr[-500:]}"


@needs_et
def test_int8_pte_is_quantized_and_agrees_on_top1(trained, bundle):
    from edgekd.targets.mobile.executorch import run_pte

    got = run_pte(bundle[0] / "model_int8.pte", trained["x_test"])
    agree = (got.argmax(1) == trained["ref"].argmax(1)).mean()
    assert agree >= 0.9
    # Quantization must have changed the numbers: an identical output would mean an FP32 program.
    assert np.abs(got - trained["ref"]).max() > 1e-4
    meta = json.loads((bundle[0] / "metadata.json").read_text())["artifacts"]["model_int8.pte"]
    assert meta["parity"]["top1_agreement"] >= 0.9 and meta["parity"]["atol"] is None
    assert meta["settings"]["calibration_samples"] == 64


def test_ort_format_loads_runs_and_matches_onnx(trained, tmp_path):
    info = to_ort_format(trained["onnx"], tmp_path, trained["x_test"], atol=1e-5, rtol=1e-5)
    ort_path = tmp_path / "model.ort"
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier of the ORT format
    a, b = run_onnx(trained["onnx"], trained["x_test"]), run_onnx(ort_path, trained["x_test"])
    assert np.abs(a - b).max() <= 1e-5
    ops = parse_required_operators((tmp_path / "required_operators.config").read_text())
    flat = {op for v in ops.values() for op in v}
    assert "Gemm" in flat and ({"Conv", "FusedConv"} & flat)
    assert info["required_operators"] == ops and info["parity_vs_onnx"]["ok"]
    assert not list(tmp_path.glob(".*work"))  # the converter's scratch folder is cleaned up
    assert str(tmp_path) not in (tmp_path / "required_operators.config").read_text()  # no build paths shipped


def test_ort_format_carries_external_data(trained, tmp_path):
    import onnx

    src = tmp_path / "src"
    src.mkdir()
    m = onnx.load(str(trained["onnx"]))
    onnx.save_model(m, str(src / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (src / "ext.onnx.data").stat().st_size > 0
    to_ort_format(src / "ext.onnx", tmp_path / "out", trained["x_test"][:8], atol=1e-5, rtol=1e-5)
    got = run_onnx(tmp_path / "out" / "model.ort", trained["x_test"][:8])
    assert np.abs(got - trained["ref"][:8]).max() <= 1e-4


@needs_et
def test_bundle_contents_hashes_and_labels(bundle):
    root, info = bundle
    want = {"model_fp32.pte", "model_int8.pte", "model.ort", "required_operators.config", "metadata.json",
            "benchmark_android.sh", "README.txt"}
    assert want <= {p.name for p in root.iterdir()}
    assert not (root.parent / ".mobile.tmp").exists()
    meta = json.loads((root / "metadata.json").read_text())
    for name, f in meta["files"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == f["sha256"], name
    assert mobile.verify_bundle(root)["files"] == meta["files"]  # what the build wrote passes adb's check
    assert meta["input"] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}
    assert meta["class_names"] == ["c0", "c1", "c2", "c3"] and meta["normalization"]["std"] == 1.0
    for name in ("model_fp32.pte", "model_int8.pte", "model.ort"):
        a = meta["artifacts"][name]
        assert a["sha256"] == meta["files"][name]["sha256"]
        assert a["parity"]["host"] is True and a["latency_ms"]["host"] is True and a["latency_ms"]["n"] == 5
        est = a["estimate"]
        assert est["method"] == "estimate-roofline" and est["measured"] is False and est["latency_ms"] > 0
        assert est["energy"]["method"] == "estimate-roofline"
    assert meta["artifacts"]["model.ort"]["parity"]["max_abs_diff"] <= 1e-3
    assert os.stat(root / "benchmark_android.sh").st_mode & stat.S_IXUSR
    script = (root / "benchmark_android.sh").read_text()
    assert "executor_runner --model_path" in script and "onnxruntime_perf_test -e cpu" in script
    assert subprocess.run(["bash", "-n", str(root / "benchmark_android.sh")]).returncode == 0  # parses
    assert set(info["artifacts"]) == {"model_fp32.pte", "model_int8.pte", "model.ort"}


@needs_et
def test_each_artifact_has_test_accuracy_through_its_own_runtime(trained, bundle):
    root, info = bundle
    meta = json.loads((root / "metadata.json").read_text())
    torch_acc = float((trained["ref"].argmax(1) == trained["y_test"]).mean())
    for name, runtime in (("model_fp32.pte", "executorch"), ("model_int8.pte", "executorch"),
                          ("model.ort", "onnxruntime (ORT format)")):
        acc = meta["artifacts"][name]["accuracy"]
        assert acc["runtime"] == runtime and acc["samples"] == len(trained["y_test"]) and acc["measured_on"] == "host"
        assert info["artifacts"][name]["accuracy"] == acc["value"]
    # FP32 artifacts compute what the PyTorch student computes: the same decisions on the test split.
    assert meta["artifacts"]["model_fp32.pte"]["accuracy"]["value"] == pytest.approx(torch_acc)
    assert meta["artifacts"]["model.ort"]["accuracy"]["value"] == pytest.approx(torch_acc)
    assert abs(meta["artifacts"]["model_int8.pte"]["accuracy"]["value"] - torch_acc) <= 0.1


class _TinyText(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(40, 8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


@needs_et
def test_token_id_model_gets_a_mobile_bundle(tmp_path):
    torch.manual_seed(0)
    m = _TinyText().eval()
    ids = torch.randint(0, 40, (32, 6))
    onnx_path = export_onnx(m, ids[:1], tmp_path / "t.onnx", opset=17)
    with torch.no_grad():
        y = m(ids).argmax(1).numpy()
    info = mobile.write_mobile_bundle(tmp_path / "c", m, ids[:1], onnx_path, ids.numpy()[:16], ids.numpy(),
                                      ["a", "b", "c"], {"tokenizer": "x"}, load_target("mobile"),
                                      timing_runs=2, timing_warmup=0, evaluation=(ids.numpy(), y))
    meta = json.loads((tmp_path / "c" / "mobile" / "metadata.json").read_text())
    assert meta["input"]["dtype"] == "int64"
    for name in ("model_fp32.pte", "model.ort"):
        assert info["artifacts"][name]["accuracy"] == 1.0  # same decisions as the torch model on its own labels


def _hide_executorch(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] == "executorch" else real(name, *a))


def test_bundle_without_executorch_ships_ort_and_fails_on_mismatch(trained, tmp_path, monkeypatch):
    _hide_executorch(monkeypatch)
    card = load_target("mobile")
    args = (torch.from_numpy(trained["x_test"][:1]), trained["onnx"], trained["x_train"][:8], trained["x_test"],
            ["a", "b", "c", "d"], {"mean": 0.0, "std": 1.0}, card)
    info = mobile.write_mobile_bundle(tmp_path / "ok", trained["model"], *args, timing_runs=3, timing_warmup=0)
    assert set(info["artifacts"]) == {"model.ort"} and set(info["skipped"]) == {"model_fp32.pte", "model_int8.pte"}
    assert not list((tmp_path / "ok" / "mobile").glob("*.pte"))
    # A student that is not the model the ONNX came from must fail the parity check (exit 4).
    other = build("small_cnn", widths=[4, 8], num_classes=N_CLASSES).eval()
    with pytest.raises(StageError) as e:
        mobile.write_mobile_bundle(tmp_path / "bad", other, *args, timing_runs=3, timing_warmup=0)
    assert e.value.exit_code == 4 and "model.ort" in str(e.value)
    assert not (tmp_path / "bad" / "mobile").exists()


def test_export_pte_without_executorch_is_unavailable(trained, tmp_path, monkeypatch):
    from edgekd.targets.mobile.executorch import export_pte

    _hide_executorch(monkeypatch)
    with pytest.raises(TargetUnavailable) as e:
        export_pte(trained["model"], torch.zeros(1, 1, 28, 28), tmp_path / "m.pte")
    assert e.value.exit_code == 3 and "mobile" in e.value.hint


def test_int8_top1_check_fails_when_decisions_change():
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5]
    got = ref.copy()
    got[:3] = np.roll(got[:3], 1, axis=1)  # 3 of 20 decisions flipped: 85% < 90%
    with pytest.raises(StageError) as e:
        mobile._top1_parity(ref, got, "model_int8.pte")
    assert e.value.exit_code == 4 and "85.0%" in str(e.value)
    assert mobile._top1_parity(ref, ref + 0.01, "x")["top1_agreement"] == 1.0


def test_roofline_estimate_numbers():
    dev = load_target("mobile").device  # 38.4 GFLOP/s, 51.2 GB/s, 1.8 W
    est = mobile.roofline_estimate(flops=38.4e6, weight_bytes=1e3, io_bytes=0, device=dev, precision="fp32")
    assert est["bound"] == "compute" and est["latency_ms"] == pytest.approx(1.0)
    assert est["energy"]["joules_per_inference"] == pytest.approx(1.8e-3)
    est = mobile.roofline_estimate(flops=1e3, weight_bytes=51.2e6, io_bytes=0, device=dev, precision="int8")
    assert est["bound"] == "memory" and est["latency_ms"] == pytest.approx(1.0)
    assert est["method"] == "estimate-roofline" and est["measured"] is False


def test_parse_ort_perf_test_output():
    r = mobile.parse_ort_perf_test(ORT_PERF_TEST_OUTPUT)
    assert r["mean"] == pytest.approx(0.841) and r["p50"] == pytest.approx(0.826) and r["p99"] == pytest.approx(1.24)
    assert r["n"] == 100 and r["peak_rss_bytes"] == 14213120 and r["throughput_per_s"] == pytest.approx(1152.07)
    with pytest.raises(StageError):
        mobile.parse_ort_perf_test("Session creation time cost: 0.02 s\n")


def test_parse_executor_runner_output():
    r = mobile.parse_executor_runner(EXECUTOR_RUNNER_OUTPUT)
    # The first iteration pays one-time setup and is dropped: 1.0, 1.2, 1.4 remain.
    assert r["n"] == 3 and r["p50"] == pytest.approx(1.2) and r["first_ms"] == pytest.approx(3.5)
    total_only = "Model executed successfully 4 time(s) in 7.100000 ms."
    assert mobile.parse_executor_runner(total_only)["mean"] == pytest.approx(1.775)
    with pytest.raises(StageError):
        mobile.parse_executor_runner("Model file model_fp32.pte is loaded.")


def _fake_adb(bin_dir: Path, serial: str) -> None:
    """An `adb` that lists one phone and answers perf_test runs with the recorded output."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "perf.txt").write_text(ORT_PERF_TEST_OUTPUT)
    script = f"""#!/usr/bin/env bash
if [ "$1" = devices ]; then printf 'List of devices attached\\n{serial}\\tdevice\\nOTHER\\tunauthorized\\n'; exit 0; fi
[ "$1" = -s ] && shift 2
case "$1 $*" in
  *getprop*) echo "Pixel Test";;
  *onnxruntime_perf_test\\ -e*) cat "{bin_dir}/perf.txt";;
esac
exit 0
"""
    (bin_dir / "adb").write_text(script)
    os.chmod(bin_dir / "adb", 0o755)


def _write_metadata(bundle_dir: Path) -> None:
    from edgekd.fsio import sha256_file

    files = {p.name: {"sha256": sha256_file(p)} for p in sorted(bundle_dir.iterdir()) if p.name != "metadata.json"}
    (bundle_dir / "metadata.json").write_text(json.dumps({"files": files}))


def test_adb_profile_refuses_a_tampered_bundle(tmp_path, monkeypatch):
    bundle_dir = tmp_path / "mobile"
    bundle_dir.mkdir()
    marker = tmp_path / "script-ran"
    script = bundle_dir / "benchmark_android.sh"
    script.write_text(mobile._BENCH_SCRIPT.replace("__RUNS__", "100").replace("__THREADS__", "1")
                      .replace("__DEVICE_DIR__", "/x"))
    (bundle_dir / "model.ort").write_bytes(b"ort")
    _write_metadata(bundle_dir)
    fake = tmp_path / "fake_bin"
    _fake_adb(fake, "PHONE1")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("ORT_PERF_TEST", str(tmp_path / "onnxruntime_perf_test"))
    assert mobile.adb_profile(bundle_dir, "PHONE1")["results"]  # the untouched bundle runs
    script.write_text(f"touch {marker}\n" + script.read_text())  # tampered after the build
    with pytest.raises(UserError, match="benchmark_android.sh does not match the sha256") as e:
        mobile.adb_profile(bundle_dir, "PHONE1")
    assert e.value.exit_code == 2 and not marker.exists()  # refused before it ran
    _write_metadata(bundle_dir)
    (bundle_dir / "extra.so").write_bytes(b"\x7fELF")  # a file the build never wrote would be pushed
    with pytest.raises(UserError, match="extra.so"):
        mobile.adb_profile(bundle_dir, "PHONE1")
    (bundle_dir / "extra.so").unlink()
    (bundle_dir / "metadata.json").unlink()
    with pytest.raises(UserError, match="no metadata.json"):
        mobile.adb_profile(bundle_dir, "PHONE1")
    assert not marker.exists()


def test_adb_missing_or_device_absent_is_exit_3(tmp_path, monkeypatch):
    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(TargetUnavailable) as e:
        mobile.adb_profile(bundle_dir, "SER123")
    assert e.value.exit_code == 3 and str(e.value).startswith("no device SER123") and e.value.hint
    fake = tmp_path / "fake_bin"
    _fake_adb(fake, "PHONE1")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(TargetUnavailable) as e:
        mobile.adb_profile(bundle_dir, "SER123")
    assert e.value.exit_code == 3 and "attached: PHONE1" in e.value.hint  # the unauthorized one is not usable


def test_adb_profile_runs_the_bundle_script(tmp_path, monkeypatch):
    bundle_dir = tmp_path / "mobile"
    bundle_dir.mkdir()
    (bundle_dir / "benchmark_android.sh").write_text(mobile._BENCH_SCRIPT.replace("__RUNS__", "100")
                                                      .replace("__THREADS__", "1").replace("__DEVICE_DIR__", "/x"))
    (bundle_dir / "model.ort").write_bytes(b"ort")
    _write_metadata(bundle_dir)
    fake = tmp_path / "fake_bin"
    _fake_adb(fake, "PHONE1")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("ET_RUNNER", raising=False)
    monkeypatch.delenv("ORT_PERF_TEST", raising=False)
    with pytest.raises(TargetUnavailable):  # phone present but no runner binaries to push
        mobile.adb_profile(tmp_path, "PHONE1")
    monkeypatch.setenv("ORT_PERF_TEST", str(tmp_path / "onnxruntime_perf_test"))
    r = mobile.adb_profile(tmp_path, "PHONE1", runs=100)
    assert r["host"] is False and r["device_model"] == "Pixel Test"
    assert set(r["results"]) == {"model.ort"}
    assert r["results"]["model.ort"]["latency_ms"]["p50"] == pytest.approx(0.826)
