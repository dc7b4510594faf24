"""The mobile bundle: .pte (FP32 and INT8, ExecuTorch/XNNPACK) and .ort (ONNX Runtime Mobile), each
checked against the PyTorch student on this host, with metadata, an adb benchmark script and a
labelled roofline estimate of on-device latency and energy. `adb_profile` times a bundle on a phone.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgekd.errors import StageError, TargetUnavailable, UserError
from edgekd.targets.estimate import roofline_estimate

if TYPE_CHECKING:
    from edgekd.config import TargetConfig

METADATA_SCHEMA_VERSION = 1
BUNDLE_DIR = "mobile"
INT8_MIN_TOP1_AGREEMENT = 0.9
DEVICE_DIR = "/data/local/tmp/edgekd"


def _sha256(path: Path) -> str:
    from edgekd.fsio import sha256_file

    return sha256_file(path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _onnx_io(onnx_path: Path) -> tuple[str, str]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i.name for i in m.graph.input if i.name not in inits]
    return inputs[0], m.graph.output[0].name


# roofline_estimate is shared with the Ascend family: edgekd.targets.estimate


def _flops_and_params(onnx_path: Path) -> tuple[float, int]:
    from edgekd.profile.measure.flops import onnx_flops

    info = onnx_flops(onnx_path)
    return float(info["flops"]), int(info["params"])


# --------------------------------------------------------------------------- bundle

_BENCH_SCRIPT = r"""#!/usr/bin/env bash
# Times this bundle's artifacts on an Android phone over adb. Run it on the host, next to the files.
# Set ET_RUNNER to an Android arm64 ExecuTorch executor_runner built with XNNPACK
# (-DEXECUTORCH_BUILD_XNNPACK=ON; with logging on, or it prints no timings), and/or ORT_PERF_TEST to
# an Android arm64 onnxruntime_perf_test (a minimal build with --include_ops_by_config
# required_operators.config is enough). Either may be left unset to skip that runtime.
set -euo pipefail
: "${ANDROID_SERIAL:?set ANDROID_SERIAL to the serial of the phone, see: adb devices}"
ET_RUNNER="${ET_RUNNER:-}"
ORT_PERF_TEST="${ORT_PERF_TEST:-}"
RUNS="${RUNS:-__RUNS__}"
THREADS="${THREADS:-__THREADS__}"
DEV_DIR="${DEV_DIR:-__DEVICE_DIR__}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ADB=(adb -s "$ANDROID_SERIAL")

"${ADB[@]}" shell mkdir -p "$DEV_DIR"
PHONE_MODEL="$("${ADB[@]}" shell getprop ro.product.model | tr -d '\r')"
echo "=== edgekd: device $PHONE_MODEL ==="

if [ -n "$ET_RUNNER" ]; then
  "${ADB[@]}" push "$ET_RUNNER" "$DEV_DIR/executor_runner" >/dev/null
  "${ADB[@]}" shell chmod 755 "$DEV_DIR/executor_runner"
  for m in model_fp32.pte model_int8.pte; do
    [ -f "$HERE/$m" ] || continue
    "${ADB[@]}" push "$HERE/$m" "$DEV_DIR/$m" >/dev/null
    echo "=== edgekd: executorch $m ==="
    # ExecuTorch logs to logcat on Android builds: capture both stdout and the ExecuTorch tag.
    "${ADB[@]}" logcat -c || true
    "${ADB[@]}" shell "cd $DEV_DIR && ./executor_runner --model_path $m --num_executions $RUNS --cpu_threads $THREADS --print_output none" 2>&1
    "${ADB[@]}" logcat -d -s ExecuTorch 2>/dev/null || true
  done
else
  echo "=== edgekd: skip executorch (ET_RUNNER not set) ==="
fi

if [ -n "$ORT_PERF_TEST" ]; then
  "${ADB[@]}" push "$ORT_PERF_TEST" "$DEV_DIR/onnxruntime_perf_test" >/dev/null
  "${ADB[@]}" shell chmod 755 "$DEV_DIR/onnxruntime_perf_test"
  "${ADB[@]}" push "$HERE/model.ort" "$DEV_DIR/model.ort" >/dev/null
  echo "=== edgekd: onnxruntime model.ort ==="
  # -I: generated inputs (batch 1); -s: print percentiles; -x: intra-op threads.
  "${ADB[@]}" shell "cd $DEV_DIR && ./onnxruntime_perf_test -e cpu -m times -r $RUNS -x $THREADS -I -s model.ort" 2>&1
else
  echo "=== edgekd: skip onnxruntime (ORT_PERF_TEST not set) ==="
fi
echo "=== edgekd: done ==="
"""

_README = """edgekd mobile bundle
====================
Student model for {device}.

Files
  model_fp32.pte            ExecuTorch program, FP32, XNNPACK-delegated (input {shape}, {dtype})
  model_int8.pte            ExecuTorch program, INT8 (pt2e, XNNPACK quantizer, per-channel), XNNPACK-delegated
  model.ort                 ONNX Runtime Mobile model (ORT format, Fixed optimizations for arm)
  required_operators.config operators model.ort needs: build a minimal ORT with
                            ./build.sh --android --minimal_build --include_ops_by_config required_operators.config
  metadata.json             input/output, normalization, class names, sha256 of each file, host checks
  benchmark_android.sh      on-device timing over adb (see the header of the script)

Preprocessing: x = (raw_value - mean) / std, raw values as the dataset stores them (e.g. 0..255
pixels), mean/std from metadata.json "normalization"; input {dtype} of the shape above
(int64 token ids from the tokenizer named in "normalization" for text models).
Outputs are logits over metadata.json "class_names".

Every artifact was run on the build host and compared with the PyTorch student
("parity" in metadata.json). Latencies in metadata.json marked "host": true were measured on the
build host, not on a phone. "estimate" figures are roofline estimates from the target card's
device figures (method "estimate-roofline"), not measurements.
{skipped}
On a phone:
  ANDROID_SERIAL=<serial> ET_RUNNER=/path/to/executor_runner ORT_PERF_TEST=/path/to/onnxruntime_perf_test \\
    bash benchmark_android.sh
or `edgekd` users: edgekd.targets.mobile.bundle.adb_profile(<this folder>, "<serial>").
"""


@dataclass
class _Build:
    """What every artifact of one bundle is built, checked and timed against."""

    tmp: Path                   # the bundle's temporary folder (renamed into place at the end)
    x_check: np.ndarray         # parity samples, in the model's input dtype
    example: torch.Tensor       # batch-1 input: export, timing and the metadata's input shape
    reference: np.ndarray       # the PyTorch student's outputs on x_check
    target: "TargetConfig"
    timing_runs: int
    timing_warmup: int
    flops: float
    params: int
    evaluation: tuple[np.ndarray, np.ndarray] | None
    validation: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def io_bytes(self) -> float:
        return float(self.example.numel() * self.example.element_size() + self.reference[0].size * 4)

    def test_accuracy(self, run: Any, runtime: str) -> dict[str, Any] | None:
        """The artifact's accuracy through its own runtime on the test split (reporting only)."""
        return self._accuracy(run, runtime, "test", self.evaluation)

    def val_accuracy(self, run: Any, runtime: str) -> dict[str, Any] | None:
        """The artifact's accuracy through its own runtime on the validation split (what the choice of the
        recommended artifact reads)."""
        return self._accuracy(run, runtime, "validation", self.validation)

    def _accuracy(self, run: Any, runtime: str, split: str, data) -> dict[str, Any] | None:
        from edgekd.runtimes.ort import top1_accuracy

        if data is None:
            return None
        x, y = data
        out = run(np.ascontiguousarray(x, dtype=self.x_check.dtype))
        return {"value": top1_accuracy(out, y), "split": split, "samples": int(len(y)), "runtime": runtime,
                "measured_on": "host"}

    def estimate(self, weight_bytes_per_param: int, precision: str) -> dict[str, Any]:
        return roofline_estimate(self.flops, self.params * weight_bytes_per_param, self.io_bytes, self.target.device,
                                 precision)


def write_mobile_bundle(out_dir: Path | str, student_model: torch.nn.Module, example: torch.Tensor,
                        fp32_onnx_path: Path | str, calib: np.ndarray, x_check: np.ndarray,
                        class_names: list[str], normalization: dict[str, Any], target: "TargetConfig",
                        *, timing_runs: int = 50, timing_warmup: int = 5,
                        evaluation: tuple[np.ndarray, np.ndarray] | None = None,
                        validation: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Build `out_dir/mobile/` (written in a temp folder, renamed into place) and return its summary.

    Each artifact is checked against the PyTorch student on `x_check`: the FP32 .pte and the .ort
    within the card's parity atol/rtol, the INT8 .pte by top-1 agreement >= 0.9 (its max abs diff
    is reported). A failed check raises StageError (exit 4). Without executorch the .pte files are
    skipped (recorded in metadata) and the .ort alone ships; the stage fails only if no format can be built.
    With `evaluation` = (x_test, y_test) each artifact's accuracy is measured through its own
    runtime (ExecuTorch for .pte, onnxruntime for .ort) on this host; with `validation` = (x_val, y_val)
    also on the validation split, which the recommended artifact is chosen by.
    """
    out_dir = Path(out_dir)
    fp32_onnx_path = Path(fp32_onnx_path)
    if not fp32_onnx_path.is_file():
        raise UserError(f"ONNX model not found: {fp32_onnx_path}", hint="run the export stage first")
    is_ids = np.issubdtype(np.asarray(x_check).dtype, np.integer)  # token ids (text models) stay int64
    in_dtype = np.int64 if is_ids else np.float32
    x_check = np.ascontiguousarray(x_check, dtype=in_dtype)
    if len(x_check) == 0:
        raise UserError("no samples to check the mobile artifacts on", hint="the validation split is empty")
    example = torch.as_tensor(np.asarray(example, dtype=in_dtype))[:1].contiguous()  # mobile programs are batch 1

    student_model = student_model.eval()
    with torch.no_grad():
        reference = torch.cat([student_model(torch.from_numpy(x_check[i:i + 256]))
                               for i in range(0, len(x_check), 256)]).numpy()

    final = out_dir / BUNDLE_DIR
    tmp = out_dir / f".{BUNDLE_DIR}.tmp"
    if tmp.exists():  # a killed earlier run of this stage left it: ours to remove
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    flops, params = _flops_and_params(fp32_onnx_path)
    b = _Build(tmp, x_check, example, reference, target, timing_runs, timing_warmup, flops, params, evaluation,
               validation)

    artifacts, skipped = _build_ptes(b, student_model, calib)
    artifacts["model.ort"] = _build_ort(b, fp32_onnx_path)
    _write_scripts(b, skipped)
    _write_metadata(b, fp32_onnx_path, artifacts, skipped, class_names, normalization)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return _summary(artifacts, skipped)


def _build_ptes(b: _Build, student_model: torch.nn.Module, calib: np.ndarray) -> tuple[dict[str, Any], dict[str, str]]:
    """The FP32 and INT8 .pte (an INT8 export failure is recorded, the FP32 one raises)."""
    from edgekd.export.onnx import check_parity

    artifacts: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("executorch") is None:
        for name in ("model_fp32.pte", "model_int8.pte"):
            skipped[name] = "executorch not installed (pip install '.[mobile]')"
        return artifacts, skipped
    from edgekd.targets.mobile.executorch import export_pte, run_pte, time_pte

    for precision in ("fp32", "int8"):
        name = f"model_{precision}.pte"
        try:
            info = export_pte(student_model, b.example, b.tmp / name, precision, calib=calib if precision == "int8" else None)
        except StageError as e:
            if precision == "fp32":
                raise
            skipped[name] = f"export failed: {e.message}"  # the fp32 .pte and the .ort still ship
            continue
        got = run_pte(b.tmp / name, b.x_check)
        if precision == "fp32":
            parity = check_parity(b.reference, got, b.target.parity.atol, b.target.parity.rtol,
                                  what=f"{name} vs the PyTorch student")
        else:
            parity = _top1_parity(b.reference, got, name)
        info["parity"] = {**parity, "host": True, "reference": "pytorch student"}
        info["latency_ms"] = time_pte(b.tmp / name, b.example.numpy(), b.timing_runs, b.timing_warmup,
                                      b.target.profile.threads)
        info["runtime"] = "executorch"
        info["accuracy"] = b.test_accuracy(lambda xs, p=b.tmp / name: run_pte(p, xs), "executorch")
        info["val_accuracy"] = b.val_accuracy(lambda xs, p=b.tmp / name: run_pte(p, xs), "executorch")
        info["estimate"] = b.estimate(4 if precision == "fp32" else 1, precision)
        artifacts[name] = info
    return artifacts, skipped


def _build_ort(b: _Build, fp32_onnx_path: Path) -> dict[str, Any]:
    """model.ort (ORT format, arm optimizations) from the FP32 ONNX, checked against the student."""
    from edgekd.export.onnx import check_parity
    from edgekd.targets.mobile.ort_format import time_ort, to_ort_format

    atol, rtol = b.target.parity.atol, b.target.parity.rtol
    info = to_ort_format(fp32_onnx_path, b.tmp, b.x_check, atol, rtol, target_platform="arm")
    parity = check_parity(b.reference, _run_ort(b.tmp / "model.ort", b.x_check), atol, rtol,
                          what="model.ort vs the PyTorch student")
    info["parity"] = {**parity, "host": True, "reference": "pytorch student"}
    info["parity_vs_onnx"] = {**info["parity_vs_onnx"], "host": True}
    info["latency_ms"] = time_ort(b.tmp / "model.ort", b.example.numpy(), b.timing_runs, b.timing_warmup,
                                  b.target.profile.threads)
    info["runtime"] = "onnxruntime-mobile"
    info["accuracy"] = b.test_accuracy(lambda xs: _run_ort(b.tmp / "model.ort", xs), "onnxruntime (ORT format)")
    info["val_accuracy"] = b.val_accuracy(lambda xs: _run_ort(b.tmp / "model.ort", xs), "onnxruntime (ORT format)")
    info["precision"] = "fp32"
    info["estimate"] = b.estimate(4, "fp32")
    return info


def _write_scripts(b: _Build, skipped: dict[str, str]) -> None:
    """benchmark_android.sh (executable) and README.txt."""
    script = b.tmp / "benchmark_android.sh"
    script.write_text(_BENCH_SCRIPT.replace("__RUNS__", str(max(b.timing_runs, 100)))
                      .replace("__THREADS__", str(b.target.profile.threads)).replace("__DEVICE_DIR__", DEVICE_DIR))
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    skipped_text = "".join(f"\nNot built here: {k}: {v}" for k, v in skipped.items())
    (b.tmp / "README.txt").write_text(_README.format(device=b.target.device.name, shape=list(b.example.shape),
                                                     dtype=str(b.example.dtype).replace("torch.", ""),
                                                     skipped=skipped_text + ("\n" if skipped_text else "")))


def _write_metadata(b: _Build, fp32_onnx_path: Path, artifacts: dict[str, Any], skipped: dict[str, str],
                    class_names: list[str], normalization: dict[str, Any]) -> None:
    """metadata.json: I/O, normalization, class names, each file's sha256 and the artifacts' checks."""
    from edgekd.targets.mobile.ort_format import CONFIG_NAME

    files = {}
    for p in sorted(b.tmp.iterdir()):
        if p.is_file():
            files[p.name] = {"sha256": _sha256(p), "size_bytes": p.stat().st_size}
    for name, a in artifacts.items():
        a["sha256"] = files[name]["sha256"]
    input_name, output_name = _onnx_io(fp32_onnx_path)
    metadata = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "target": b.target.name,
        "input": {"name": input_name, "shape": list(b.example.shape), "dtype": str(b.example.dtype).replace("torch.", "")},
        "output": {"name": output_name, "shape": [1, int(b.reference.shape[-1])], "dtype": "float32"},
        "normalization": normalization,
        "class_names": list(class_names),
        "files": files,
        "artifacts": artifacts,
        "skipped": skipped,
        "required_operators_config": CONFIG_NAME,
        "model": {"flops": b.flops, "params": b.params},
        "notes": ["parity and latency_ms marked host=true were measured on the build host, not on the device",
                  "estimate.* figures are roofline estimates from the target card (method estimate-roofline), not measurements"],
    }
    (b.tmp / "metadata.json").write_text(json.dumps(_jsonable(metadata), indent=2) + "\n")


def _summary(artifacts: dict[str, Any], skipped: dict[str, str]) -> dict[str, Any]:
    summary = {name: {"format": a["format"], "precision": a["precision"], "size_bytes": a["size_bytes"],
                      "sha256": a["sha256"], "host_p50_ms": a["latency_ms"]["p50"],
                      "parity_max_abs_diff": a["parity"]["max_abs_diff"],
                      "top1_agreement": a["parity"]["top1_agreement"],
                      "accuracy": (a.get("accuracy") or {}).get("value"),
                      "runtime": a["runtime"],
                      "host_latency_ms": a["latency_ms"],
                      "estimate_latency_ms": a["estimate"]["latency_ms"],
                      "estimate_joules": a["estimate"]["energy"]["joules_per_inference"]}
               for name, a in artifacts.items()}
    return _jsonable({"metadata": f"{BUNDLE_DIR}/metadata.json", "artifacts": summary,
                      "skipped": skipped, "estimate_method": "estimate-roofline"})


def _run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    from edgekd.runtimes.ort import run_onnx

    return run_onnx(path, x)


def _top1_parity(reference: np.ndarray, got: np.ndarray, what: str) -> dict[str, Any]:
    """INT8 check: quantization moves logits by more than any FP atol, so compare the decisions."""
    if reference.shape != got.shape:
        raise StageError(f"{what}: output has shape {got.shape}, expected {reference.shape}",
                         hint="the exported program changed the model's output")
    agree = float((reference.argmax(-1) == got.argmax(-1)).mean())
    max_diff = float(np.abs(reference.astype(np.float64) - got).max())
    result = {"ok": agree >= INT8_MIN_TOP1_AGREEMENT, "top1_agreement": agree, "min_top1_agreement": INT8_MIN_TOP1_AGREEMENT,
              "max_abs_diff": max_diff, "samples": int(len(reference)), "atol": None, "rtol": None}
    if not result["ok"]:
        raise StageError(f"{what}: top-1 agrees with the PyTorch student on {agree:.1%} of samples "
                         f"(need {INT8_MIN_TOP1_AGREEMENT:.0%}; max abs diff {max_diff:.3g})",
                         hint="calibrate on more samples (quantize.calibration_samples) or ship the fp32 .pte")
    return result


# --------------------------------------------------------------------------- on device

_FLOAT = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def parse_ort_perf_test(text: str) -> dict[str, Any]:
    """Latency figures (ms) from `onnxruntime_perf_test` output; raises StageError if it has none."""
    out: dict[str, Any] = {}
    m = re.search(r"Average inference time cost:\s*" + _FLOAT + r"\s*ms", text)
    if m:
        out["mean"] = float(m.group(1))
    for key in ("Min", "Max", "P50", "P90", "P95", "P99", "P999"):
        m = re.search(rf"^\s*{key} Latency:\s*" + _FLOAT + r"\s*s\s*$", text, re.M)
        if m:
            out[key.lower()] = float(m.group(1)) * 1e3  # perf_test prints seconds
    m = re.search(r"Total inference requests:\s*(\d+)", text)
    if m:
        out["n"] = int(m.group(1))
    m = re.search(r"Number of inferences per second:\s*" + _FLOAT, text)
    if m:
        out["throughput_per_s"] = float(m.group(1))
    m = re.search(r"Peak working set size:\s*(\d+)", text)
    if m:
        out["peak_rss_bytes"] = int(m.group(1))
    if "mean" not in out and "p50" not in out:
        raise StageError("onnxruntime_perf_test printed no latency figures",
                         hint="run benchmark_android.sh by hand and check the perf_test output")
    return out


def parse_executor_runner(text: str) -> dict[str, Any]:
    """Latency figures (ms) from ExecuTorch `executor_runner` logs (stdout or logcat).

    Per-iteration lines give percentiles (the first run, which pays one-time setup, is dropped as
    warmup when there are more); otherwise the mean comes from the total over all executions.
    """
    from edgekd.profile.measure.stats import summarize

    iters = [float(x) for x in re.findall(r"Iteration \d+ of \d+:\s*" + _FLOAT + r"\s*ms", text)]
    m = re.search(r"Model executed successfully (\d+) time\(s\) in\s*" + _FLOAT + r"\s*ms", text)
    if iters:
        samples = iters[1:] if len(iters) > 1 else iters
        return {**summarize(samples), "first_ms": iters[0]}
    if m and int(m.group(1)) > 0:
        n = int(m.group(1))
        return {"mean": float(m.group(2)) / n, "n": n, "includes_first_run": True}
    raise StageError("executor_runner printed no timing lines",
                     hint="build executor_runner with logging enabled (EXECUTORCH_ENABLE_LOGGING=ON) and XNNPACK")


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """Split benchmark_android.sh output into its `=== edgekd: RUNTIME FILE ===` sections and parse each."""
    results: dict[str, Any] = {}
    device = None
    parts = re.split(r"^=== edgekd: (.+?) ===\s*$", text, flags=re.M)
    for header, body in zip(parts[1::2], parts[2::2]):
        words = header.split()
        if words[0] == "device":
            device = " ".join(words[1:]) or None
        elif words[0] == "executorch" and len(words) == 2:
            results[words[1]] = {"runtime": "executorch", "latency_ms": parse_executor_runner(body)}
        elif words[0] == "onnxruntime" and len(words) == 2:
            results[words[1]] = {"runtime": "onnxruntime-mobile", "latency_ms": parse_ort_perf_test(body)}
    return {"device_model": device, "results": results}


def verify_bundle(bundle_dir: Path) -> dict[str, Any]:
    """Check every file of the bundle against the sha256 recorded in its metadata.json.

    The bundle is about to be run (benchmark_android.sh) and pushed to a phone: a file edited or
    swapped since the build is refused, as is a file the build did not write.
    """
    meta_path = bundle_dir / "metadata.json"
    hint = "rebuild the bundle with `edgekd build --target mobile` (or restore the files the build wrote)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        files = meta["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        raise UserError(f"{bundle_dir} has no metadata.json, so its files cannot be verified", hint=hint) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{meta_path} is corrupt (no 'files' table of sha256)", hint=hint) from None
    if "benchmark_android.sh" not in files:
        raise UserError(f"{meta_path} does not list benchmark_android.sh", hint=hint)
    for name, rec in sorted(files.items()):
        p = bundle_dir / name
        if Path(name).name != name or not p.is_file():
            raise UserError(f"bundle file {name} listed in metadata.json is missing", hint=hint)
        want = rec.get("sha256") if isinstance(rec, dict) else None
        if not want or _sha256(p) != want:
            raise UserError(f"bundle file {name} does not match the sha256 in metadata.json: refusing to run or push it",
                            hint=hint)
    extra = sorted(p.name for p in bundle_dir.iterdir() if p.name not in files and p.name != "metadata.json")
    if extra:
        raise UserError(f"bundle has files metadata.json does not list: {', '.join(extra)}", hint=hint)
    return meta


def _adb_devices(adb: str) -> list[str]:
    proc = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=30)
    serials = []
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 2 and cols[1] == "device":  # skip "unauthorized" / "offline"
            serials.append(cols[0])
    return serials


def attached_phone(serial: str) -> str:
    """The adb executable, once phone `serial` is listed by `adb devices`; TargetUnavailable (exit 3) otherwise."""
    hint = "connect the phone with USB debugging on, install Android platform-tools, and check `adb devices`"
    adb = shutil.which("adb")
    if adb is None:
        raise TargetUnavailable(f"no device {serial}: adb is not on PATH", hint=hint)
    attached = _adb_devices(adb)
    if serial not in attached:
        raise TargetUnavailable(f"no device {serial}",
                                hint=f"{hint}; attached: {', '.join(attached) if attached else 'none'}")
    return adb


def adb_profile(bundle_dir: Path | str, serial: str, runs: int = 100, threads: int = 1,
                timeout_s: int = 900) -> dict[str, Any]:
    """Run the bundle's benchmark_android.sh on phone `serial` and parse the on-device latencies.

    Needs `adb` on PATH, the phone listed by `adb devices`, and ET_RUNNER and/or ORT_PERF_TEST in
    the environment (Android builds of the runners). Otherwise TargetUnavailable (exit 3).
    """
    bundle_dir = Path(bundle_dir)
    if (bundle_dir / BUNDLE_DIR / "benchmark_android.sh").is_file():
        bundle_dir = bundle_dir / BUNDLE_DIR
    attached_phone(serial)
    script = bundle_dir / "benchmark_android.sh"
    if not script.is_file():
        raise UserError(f"{bundle_dir} is not a mobile bundle (no benchmark_android.sh)",
                        hint="pass the build's convert/mobile folder")
    if not (os.environ.get("ET_RUNNER") or os.environ.get("ORT_PERF_TEST")):
        raise TargetUnavailable("no on-device runner: set ET_RUNNER and/or ORT_PERF_TEST",
                                hint="point them at Android arm64 builds of executor_runner and onnxruntime_perf_test")
    verify_bundle(bundle_dir)  # the script runs here and pushes the models: only what the build wrote
    env = {**os.environ, "ANDROID_SERIAL": serial, "RUNS": str(runs), "THREADS": str(threads)}
    try:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError(f"benchmark_android.sh on {serial} took longer than {timeout_s} s",
                         hint="lower runs, or check the phone is not asleep") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise StageError(f"benchmark_android.sh failed on {serial} (exit {proc.returncode}): {tail[0][:200]}",
                         hint=f"run `ANDROID_SERIAL={serial} bash {script}` by hand to see the full log")
    parsed = parse_benchmark_output(proc.stdout)
    return {"serial": serial, "host": False, "method": "adb", "runs": runs, "threads": threads, **parsed,
            "energy": None, "energy_note": "no power counter read over adb; see the bundle's estimate-roofline figures"}
