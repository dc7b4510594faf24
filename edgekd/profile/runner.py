"""Run the profiling workers in fresh processes and aggregate repeats.

One process per model and repeat: each measurement starts from a clean allocator, thread pool and
peak-RSS counter. Repeats run one after another (never in parallel: two BLAS thread pools on the
same cores slow each other many times over), and `interleaved_profile` alternates the models so a
slow drift of the machine (thermal, neighbours) spreads over all of them instead of one.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import edgekd
from edgekd.errors import StageError
from edgekd.profile.spec import GenerationSpec, ProfileSpec, load_spec

NOISY_SPREAD = 0.05  # repeats whose p50s differ by more than 5% of the median are flagged noisy

Progress = Callable[[str, int, int], None]  # (model name, repeat number from 1, repeats)


def _timeout(spec: ProfileSpec) -> float:
    """Generous wall limit for one worker: load + warm-up + timed loop + throughput sweep."""
    n_batches = len(spec.sweep())
    worst = spec.warmup_seconds + spec.max_seconds * (1 + n_batches)
    return 120.0 + 2.0 * max(worst, n_batches * spec.per_batch_seconds())


def run_worker(spec: ProfileSpec | Mapping[str, Any], workdir: Path, tag: str, timeout_s: float | None = None) -> dict:
    """One worker process on one spec; returns its result dict or raises StageError."""
    spec = load_spec(ProfileSpec, spec)
    limit = timeout_s if timeout_s is not None else _timeout(spec)
    return spawn("edgekd.profile.worker", spec, spec.display_name, spec.threads, workdir, tag, limit)


def run_bench(spec: GenerationSpec, workdir: Path, tag: str, timeout_s: float = 1800.0) -> dict:
    """The text-generation benchmark (`edgekd.llm.bench`) of one model in its own process."""
    spec = load_spec(GenerationSpec, spec)
    return spawn("edgekd.llm.bench", spec, spec.display_name, spec.settings.threads, workdir, tag, timeout_s)


def spawn(module: str, spec: BaseModel, name: str, threads: int, workdir: Path, tag: str, limit: float) -> dict:
    """`python -m MODULE SPEC_JSON OUT_JSON` in a fresh process pinned to `threads`; its result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{tag}.spec.json"
    out_path = workdir / f"{tag}.result.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(spec.model_dump_json(indent=2))
    env = dict(os.environ)
    # The child must import this very edgekd, installed or from a source tree.
    root = str(Path(edgekd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Keep OpenMP/BLAS pools of the child at the profiled thread count (numpy, torch interop).
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)})
    try:
        proc = subprocess.run([sys.executable, "-m", module, str(spec_path), str(out_path)],
                              capture_output=True, text=True, env=env, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise StageError(f"profiling {name} timed out after {limit:.0f} s",
                         hint="lower max_seconds / batch_sweep in the target card, or check the model") from None
    if proc.returncode != 0 or not out_path.is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {proc.returncode}, no output"
        (workdir / f"{tag}.stderr.txt").write_text(proc.stderr)
        code = proc.returncode if proc.returncode in (2, 3) else None  # keep user/unavailable exit codes
        raise StageError(f"profiling {name} failed: {last}",
                         hint=f"full worker log: {workdir / (tag + '.stderr.txt')}", exit_code=code)
    return json.loads(out_path.read_text())


def _median_index(values: list[float]) -> int:
    """Index of the run whose value is the median (the lower middle one for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def repeat_spread(p50s: list[float]) -> float:
    """How far the repeats' p50s spread, as a fraction of their median (`noisy` above NOISY_SPREAD): the classifier's
    interleaved processes here, a language model's passes over its prompts in llm/bench.py."""
    med = statistics.median(p50s)
    return (max(p50s) - min(p50s)) / med if med > 0 else 0.0


def aggregate(name: str, runs: list[dict]) -> dict:
    """Combine repeats: latency of the median-p50 repeat, throughput/CPU time medians, peak RSS max."""
    if not runs:
        raise StageError(f"no profiling runs for {name}", hint="repeats must be >= 1")
    p50s = [float(r["latency_ms"]["p50"]) for r in runs]
    chosen = runs[_median_index(p50s)]
    spread = repeat_spread(p50s)
    out = dict(chosen)
    out["name"] = name
    out["repeats"] = p50s
    out["repeat_latency_ms"] = [r["latency_ms"] for r in runs]
    out["spread"] = spread
    out["noisy"] = spread > NOISY_SPREAD
    out["cpu_seconds_per_inference"] = statistics.median(float(r["cpu_seconds_per_inference"]) for r in runs)
    tps = [r["throughput_per_s"] for r in runs if r.get("throughput_per_s") is not None]
    out["throughput_per_s"] = statistics.median(tps) if tps else None
    sweep: dict[str, float] = {}
    for b in chosen.get("throughput_sweep", {}):
        vals = [r["throughput_sweep"][b] for r in runs if b in r.get("throughput_sweep", {})]
        sweep[b] = statistics.median(vals)
    out["throughput_sweep"] = sweep
    for key in ("peak_rss_bytes", "peak_rss_delta_bytes", "rss_after_load_bytes"):
        out[key] = max(int(r[key]) for r in runs)
    out["wall_seconds"] = sum(float(r.get("wall_seconds", 0.0)) for r in runs)
    return out


def profile_model(spec: ProfileSpec | Mapping[str, Any], repeats: int = 3, workdir: Path | None = None,
                  progress: Progress | None = None, timeout_s: float | None = None) -> dict:
    """Profile one model `repeats` times, each in a fresh process, and aggregate."""
    spec = load_spec(ProfileSpec, spec)
    return interleaved_profile({spec.display_name: spec}, repeats, workdir, progress, timeout_s)[spec.display_name]


def interleaved_profile(specs: Mapping[str, ProfileSpec | Mapping[str, Any]], repeats: int = 3, workdir: Path | None = None,
                        progress: Progress | None = None, timeout_s: float | None = None) -> dict[str, dict]:
    """Profile several models: repeat r of every model runs before repeat r+1 of any."""
    if repeats < 1:
        raise StageError(f"repeats must be >= 1, got {repeats}", hint="fix profile.repeats in the target card")
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="edgekd-profile-"))
    workdir = Path(workdir)
    named = {name: load_spec(ProfileSpec, spec).with_model(name=name) for name, spec in specs.items()}
    runs: dict[str, list[dict]] = {name: [] for name in specs}
    for r in range(repeats):
        for i, (name, spec) in enumerate(named.items()):
            if progress is not None:
                progress(name, r + 1, repeats)
            runs[name].append(run_worker(spec, workdir, f"{i:02d}-{_safe(name)}-r{r}", timeout_s))
    return {name: aggregate(name, rs) for name, rs in runs.items()}


def measure_host_peak(threads: int, workdir: Path | None = None, seconds: float = 0.5) -> dict:
    """The host's FP32 peak GFLOP/s at `threads`, measured by a short sgemm calibration in a fresh
    worker (same thread pinning as the profiled models); also the CPU model and its ISA flags."""
    if workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="edgekd-profile-"))
    spec = ProfileSpec(kind="sgemm", name="sgemm-calibration", path="sgemm", threads=threads, seconds=seconds)
    return run_worker(spec, Path(workdir), "host-peak", timeout_s=120.0 + 4 * seconds)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
