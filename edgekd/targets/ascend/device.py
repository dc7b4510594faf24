"""Ascend on the device: the readers of msit benchmark and npu-smi output, model.om timed on the NPU
with npu-smi power sampling, the SoC detected from `npu-smi info`, and the PyTorch teacher run on
the NPU through torch_npu (npu-smi energy). Every tool is looked up on PATH when called: none of
this needs CANN to import.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import StageError, TargetUnavailable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import AscendConfig, TargetConfig


# --------------------------------------------------------------------------- msit / npu-smi on the device
#
# Formats (recorded in tests/fixtures/ascend/, each file says where it comes from):
# - msit benchmark prints a "Performance Summary" through its logger:
#     [INFO] NPU_compute_time (ms): min = A, max = B, mean = C, median = D, percentile(99%) = E
#     [INFO] throughput 1000*batchsize.mean(1)/NPU_compute_time.mean(C): T
#   (H2D_latency / D2H_latency lines in the same form with --display-all-summary True; older
#   ais_bench/ais_infer builds print "throughput 1000*batchsize(16)/..." or
#   "throughput (1000*batchsize/NPU_compute_time): T"). Source: msit's benchmark README
#   ("Output result explanation") and its summary.py logger.info format strings.
# - `npu-smi info` prints one table row per chip: "| %-7d %-22s| %-15s | ..." (card id, chip name
#   such as 310P3 or 910B3, health), source: CANN npu-smi npu_info_print.c print_card_total_info_first.

_FLOAT = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_MSIT_STAT = re.compile(
    r"(H2D_latency|NPU_compute_time|D2H_latency) \(ms\): min = " + _FLOAT + r", max = " + _FLOAT
    + r", mean = " + _FLOAT + r", median = " + _FLOAT + r", percentile\((\d+(?:\.\d+)?)%\) = " + _FLOAT)
_MSIT_THROUGHPUT = re.compile(r"throughput[^:\n]*:\s*" + _FLOAT + r"\s*$", re.MULTILINE)
_MSIT_BATCH = re.compile(r"throughput 1000\*batchsize(?:\.mean)?\((\d+(?:\.\d+)?)\)")
_NPU_SMI_ROW = re.compile(r"^\|\s*(\d+)\s+([0-9A-Za-z][0-9A-Za-z_-]*[A-Za-z][0-9A-Za-z_-]*)\s*\|\s*"
                          r"(OK|Warning|Alarm|Critical|NA|Unknown)\b", re.MULTILINE)


def parse_msit_summary(text: str) -> dict[str, Any]:
    """Figures of msit benchmark's Performance Summary: NPU_compute_time as latency_ms
    {min, max, mean, p50, p99}, the H2D/D2H copies when printed, and the throughput line."""
    stats: dict[str, dict[str, float]] = {}
    for m in _MSIT_STAT.finditer(text):
        name, mn, mx, mean, median, pct, pval = m.groups()
        key = f"p{pct.rstrip('0').rstrip('.')}" if "." in pct else f"p{pct}"
        stats[name] = {"min": float(mn), "max": float(mx), "mean": float(mean), "p50": float(median), key: float(pval)}
    if "NPU_compute_time" not in stats:
        raise StageError("msit benchmark printed no 'NPU_compute_time (ms): ...' summary line",
                         hint="run ./benchmark.sh in the bundle by hand; msit logs the Performance Summary at INFO level")
    tp = _MSIT_THROUGHPUT.findall(text)
    batch = _MSIT_BATCH.search(text)
    out: dict[str, Any] = {"latency_ms": stats["NPU_compute_time"], "latency_what": "NPU_compute_time (excludes H2D/D2H copies)",
                           "throughput_per_s": float(tp[-1]) if tp else None,
                           "batch": float(batch.group(1)) if batch else None}
    for k, name in (("h2d_ms", "H2D_latency"), ("d2h_ms", "D2H_latency")):
        if name in stats:
            out[k] = stats[name]
    return out


def parse_npu_smi_chips(text: str) -> list[dict[str, Any]]:
    """(npu id, chip name) of each chip row of `npu-smi info`."""
    return [{"npu_id": int(m.group(1)), "name": m.group(2), "health": m.group(3)} for m in _NPU_SMI_ROW.finditer(text)]


def detect_ascend_soc(timeout_s: float = 20.0) -> tuple[str | None, str]:
    """(soc_version, how it was found) from `npu-smi info` on this host; (None, why not) otherwise."""
    smi = shutil.which("npu-smi")
    if smi is None:
        return None, "npu-smi not on PATH (no Ascend driver)"
    try:
        proc = subprocess.run([smi, "info"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"npu-smi info failed: {e}"
    chips = parse_npu_smi_chips(proc.stdout)
    if proc.returncode != 0 or not chips:
        return None, f"npu-smi info listed no chip (exit {proc.returncode})"
    name = chips[0]["name"]
    soc = name if name.startswith("Ascend") else f"Ascend{name}"
    return soc, f"npu-smi info reports chip {name} on NPU {chips[0]['npu_id']}"


def run_msit_on_device(om_path: Path | str, loop: int, warmup: int, device_id: int = 0, *,
                       idle_seconds: float = 2.0, interval_s: float = 0.1, timeout_s: float = 1800.0,
                       sampler: Any = None, extra: "list[str] | tuple[str, ...]" = ()) -> dict[str, Any]:
    """Time model.om with `msit benchmark` while `npu-smi info -t power` is sampled in the background.

    The board's idle power is sampled for `idle_seconds` first and subtracted: joules per inference
    = integral of (P - P_idle) over the msit run / (loop + warmup) calls, so model load and process
    start (near idle power) add almost nothing, and what remains is the energy the inferences drew.
    `extra` is appended to msit's command line (e.g. --input with a graph's sample feeds).
    Raises TargetUnavailable when msit or npu-smi is missing, StageError when msit fails.
    """
    from edgekd.profile.measure.energy import NpuSmiSampler, integrate_trapezoid

    om = Path(om_path)
    msit = shutil.which("msit")
    if msit is None:
        raise TargetUnavailable("msit not on PATH", hint="pip install msit && msit install benchmark, on the Ascend host")
    if sampler is None:
        if shutil.which("npu-smi") is None:
            raise TargetUnavailable("npu-smi not on PATH", hint="install the Ascend driver (npu-smi ships with it)")
        sampler = NpuSmiSampler(device_id, interval_s=interval_s)
    if not om.is_file():
        raise StageError(f"{om} not found", hint="run the bundle's convert.sh (atc) first")
    idle = sampler.idle_watts(idle_seconds)
    cmd = [msit, "benchmark", "--om-model", str(om), "--loop", str(int(loop)), "--warmup-count", str(int(warmup)),
           "--device", str(int(device_id)), *extra]
    sampler.start()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=om.parent)
    except subprocess.TimeoutExpired:
        sampler.stop()
        raise StageError(f"msit benchmark ran longer than {timeout_s:.0f} s", hint="lower [ascend] loop") from None
    wall = time.perf_counter() - t0
    gross = sampler.stop()
    log = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
    log_path = om.parent / ("msit.log" if om.stem == "model" else f"msit_{om.stem}.log")
    log_path.write_text(log, encoding="utf-8")
    if proc.returncode != 0:
        tail = (log.strip().splitlines() or ["no output"])[-1][:200]
        raise StageError(f"msit benchmark failed (exit {proc.returncode}): {tail}", hint=f"see {log_path}")
    summary = parse_msit_summary(log)
    samples = list(sampler.samples)
    window = samples[-1][0] - samples[0][0] if len(samples) > 1 else wall
    dynamic = integrate_trapezoid([(t, w - idle) for t, w in samples])
    calls = int(loop) + int(warmup)
    mean_w = gross / window if window > 0 else None
    energy: dict[str, Any] = {
        "method": "npu-smi", "measured": True,
        "joules_per_inference": dynamic / calls if calls and dynamic > 0 else None,
        "idle_watts": idle, "mean_watts": mean_w, "joules_total": gross, "joules_above_idle": dynamic,
        "window_s": window, "samples": len(samples), "calls": calls,
        "note": "board power from npu-smi info -t power, idle baseline subtracted, per model call (one batch)"}
    if energy["joules_per_inference"] is None:
        energy["error"] = "power never rose above the idle baseline: the run was too short for npu-smi to see it"
    return {**summary, "runtime": "msit benchmark", "command": " ".join(cmd), "loop": int(loop), "warmup": int(warmup),
            "device_id": int(device_id), "wall_s": wall, "energy": energy, "log": log_path.name}


# --------------------------------------------------------------------------- on the Ascend host


def device_tools() -> dict[str, str | None]:
    """Paths of the CANN/driver tools a device measurement needs (None = not on PATH)."""
    return {tool: shutil.which(tool) for tool in ("atc", "msit", "npu-smi")}


def profile_on_device(bundle: Path | str, ascend: "AscendConfig") -> dict[str, Any]:
    """Time the bundle's model.om on the NPU (msit) with npu-smi power sampling, when this host
    has atc, msit and npu-smi and atc produced model.om; else {"status": "not run", "reason"}."""
    bundle = Path(bundle)
    tools = device_tools()
    missing = [k for k, v in tools.items() if v is None]
    if missing:
        return {"status": "not run", "reason": f"{', '.join(missing)} not on PATH: no Ascend host"}
    if not (bundle / "model.om").is_file():
        return {"status": "not run", "reason": "no model.om: atc did not produce one"}
    soc, how = detect_ascend_soc()
    res = run_msit_on_device(bundle / "model.om", ascend.loop, ascend.warmup, ascend.device_id,
                             idle_seconds=ascend.idle_seconds, interval_s=ascend.power_interval_s)
    return {"status": "ok", "device": soc or ascend.soc_version, "device_detected": how, **res}


def teacher_on_npu(load_model: Any, example: Any, target: "TargetConfig") -> tuple[str, dict[str, Any]] | None:
    """The PyTorch teacher on the NPU through torch_npu with npu-smi energy, idle power subtracted
    as for model.om (msit), so the two per-inference figures are of the same kind. None when
    torch_npu sees no NPU here."""
    from edgekd.profile.measure.energy import NpuSmiSampler
    from edgekd.runtimes.torch_device import torch_npu_status
    from edgekd.targets.base import torch_teacher_row

    if not torch_npu_status()[0]:
        return None
    asc = target.ascend  # present: the family's pre-flight refuses a card without [ascend]
    return torch_teacher_row(load_model, example, target, "npu", NpuSmiSampler(asc.device_id),
                             idle_seconds=asc.idle_seconds)
