"""Profile ONE model in this process: `python -m edgekd.profile.worker SPEC_JSON OUT_JSON`.

The runner starts a fresh process per model and repeat, so one model's allocator arenas, thread
pools and caches never colour another's timings or peak memory.

SPEC_JSON is a `ProfileSpec` (edgekd/profile/spec.py: its fields, defaults and meanings), validated
here before anything loads: an unknown or mistyped field exits 2.
"""
from __future__ import annotations

import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdError, UserError
from edgekd.profile.measure.memory import current_rss, peak_rss
from edgekd.profile.measure.stats import summarize
from edgekd.profile.measure.timing import timed_calls
from edgekd.profile.spec import ProfileSpec, load_spec


def _numpy_dtype(onnx_type: str):
    import numpy as np

    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    if onnx_type not in table:
        raise UserError(f"the profiler cannot feed an input of type {onnx_type}",
                        hint="profile a model whose input is a float or integer tensor")
    return table[onnx_type]


def _sample_pool(spec: ProfileSpec, shape: list[int], dtype, n_needed: int):
    """[N, ...] samples to cycle through: the real ones from input_file, else seeded random normal
    (integer inputs get 0/1 values, valid for token ids and masks)."""
    import numpy as np

    if spec.input_file:
        path = Path(spec.input_file)
        if not path.is_file():
            raise UserError(f"input_file not found: {path}", hint="pass a .npy file of samples [N, ...]")
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != len(shape) or list(arr.shape[1:]) != list(shape[1:]) or arr.shape[0] == 0:
            raise UserError(f"input_file {path.name} has shape {list(arr.shape)}, expected [N, {', '.join(map(str, shape[1:]))}]",
                            hint="save the samples with the model's per-sample shape, batch first")
        return np.ascontiguousarray(arr.astype(dtype, copy=False)), f"file:{path.name}"
    rng = np.random.default_rng(spec.seed)
    n = max(16, n_needed)
    full = [n, *shape[1:]]
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        arr = rng.integers(0, 2, size=full).astype(dtype)
    else:
        arr = rng.standard_normal(full, dtype=np.float32).astype(dtype)
    return arr, f"random-normal(seed={spec.seed})"


def _batches(pool, batch: int, count: int) -> list:
    """`count` contiguous batches cycled from the pool, built before timing so slicing is not timed."""
    import numpy as np

    n = pool.shape[0]
    out = []
    for i in range(count):
        idx = (np.arange(batch) + i * batch) % n
        out.append(np.ascontiguousarray(pool[idx]))
    return out


class _Loaded:
    def __init__(self, run: Callable[[Any], Any], runtime: str, version: str, providers: list[str],
                 static_batch: int | None, shape: list[int], dtype: Any) -> None:
        self.run, self.runtime, self.version, self.providers = run, runtime, version, providers
        self.static_batch, self.shape, self.dtype = static_batch, shape, dtype


def _import_runtime(kind: str) -> None:
    # Imported before the "before load" RSS reading so the delta is the model, not the library.
    if kind == "onnx":
        import onnxruntime  # noqa: F401
    else:
        import torch  # noqa: F401

        import edgekd.zoo  # noqa: F401


def _load_onnx(spec: ProfileSpec) -> _Loaded:
    import onnxruntime as ort

    path = Path(str(spec.path))
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}", hint="run the export/quantize stage first")
    from edgekd.runtimes.ort import session

    sess = session(path, spec.threads, list(spec.providers), sequential=True, require_providers=True)
    inputs = sess.get_inputs()
    name = spec.input_name or inputs[0].name
    match = [i for i in inputs if i.name == name]
    if not match:
        raise UserError(f"model has no input named '{name}'", hint=f"inputs: {', '.join(i.name for i in inputs)}")
    if len(inputs) > 1:
        raise UserError(f"{path.name} has {len(inputs)} inputs; the profiler feeds one",
                        hint="profile a single-input graph")
    inp = match[0]
    dims = list(inp.shape)
    static_batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    shape = spec.input_shape
    if shape is None:
        if any(not isinstance(d, int) or d <= 0 for d in dims[1:]):
            raise UserError(f"input '{name}' has symbolic dims {dims}", hint="give input_shape in the profile spec")
        shape = [1, *dims[1:]]
    dtype = _numpy_dtype(inp.type)
    run = lambda x: sess.run(None, {name: x})  # noqa: E731
    return _Loaded(run, "onnxruntime", ort.__version__, list(sess.get_providers()), static_batch, list(shape), dtype)


def _load_torch(spec: ProfileSpec) -> _Loaded:
    import numpy as np
    import torch

    from edgekd.zoo import build

    path = Path(str(spec.path))
    if not path.is_file():
        raise UserError(f"state_dict not found: {path}", hint="run the training/distillation stage first")
    if not spec.arch and not spec.model_ref:
        raise UserError("a torch profile spec needs 'arch' (or 'model_ref')", hint="name the zoo architecture and its kwargs")
    if spec.input_shape is None:
        raise UserError("a torch profile spec needs 'input_shape'", hint="e.g. [1, 1, 28, 28]")
    torch.set_num_threads(spec.threads)
    if spec.model_ref:  # any model source of a card (the user's factory, an HF folder, a zoo arch)
        from edgekd.zoo.sources import build_model

        model = build_model(spec.model_ref)
    else:
        model = build(spec.arch, **spec.kwargs)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()

    def run(x):
        with torch.inference_mode():
            return model(x)

    dtype = np.dtype(spec.input_dtype or "float32")  # int64 for token-id models
    loaded = _Loaded(run, "torch", torch.__version__, ["cpu"], None, list(spec.input_shape), dtype.type)
    loaded.to_tensor = torch.from_numpy  # type: ignore[attr-defined]
    return loaded


@dataclass
class _Latency:
    """The batch-1 run: warm-up done, per-call latencies (ms), their wall and CPU seconds, measured energy."""

    warm: int
    warm_s: float
    samples: list[float]
    timed_s: float
    cpu_s: float
    energy_measured: dict | None


def _sgemm_record(spec: ProfileSpec, wall0: float) -> dict:
    """The host's FP32 peak at this process's (pinned) thread count: a spec of kind "sgemm"."""
    from edgekd.profile.measure.host import cpu_info, sgemm_peak

    return {"name": spec.name or "sgemm", "kind": spec.kind, "threads": spec.threads,
            **sgemm_peak(spec.seconds), "cpu": cpu_info(), "wall_seconds": time.perf_counter() - wall0}


def _load_measured(spec: ProfileSpec) -> tuple[_Loaded, dict[str, Any]]:
    """Load the model, timing the load and reading RSS around it; the readings are record fields."""
    _import_runtime(spec.kind)
    rss_before = current_rss()
    t_load = time.perf_counter()
    loaded = _load_onnx(spec) if spec.kind == "onnx" else _load_torch(spec)
    load_seconds = time.perf_counter() - t_load
    rss_after = current_rss()
    return loaded, {"load_seconds": load_seconds, "rss_before_load_bytes": rss_before,
                    "rss_after_load_bytes": rss_after}


def _measure_latency(loaded: _Loaded, singles: list, spec: ProfileSpec) -> _Latency:
    """Warm up, then time batch-1 calls (with the energy sampler running around the timed part only)."""
    # Warm-up: both the run count and the duration, so lazy allocations and caches have settled.
    w0 = time.perf_counter()
    warm = 0
    while warm < spec.warmup_runs or time.perf_counter() - w0 < spec.warmup_seconds:
        loaded.run(singles[warm % len(singles)])
        warm += 1
        if time.perf_counter() - w0 > spec.max_seconds:
            break
    warm_s = time.perf_counter() - w0

    from edgekd.profile.measure.energy import measured_result, pick_sampler

    sampler = pick_sampler(spec.energy, loaded.providers)
    if sampler is not None:
        sampler.start()
    samples, timed_s, cpu_s = timed_calls(loaded.run, singles, spec.min_runs, spec.min_seconds, spec.max_seconds)
    energy_measured = None
    if sampler is not None:
        energy_measured = measured_result(sampler.method, sampler.stop(), len(samples), timed_s)
    return _Latency(warm, warm_s, samples, timed_s, cpu_s, energy_measured)


def _throughput_sweep(loaded: _Loaded, pool: Any, to_input: Callable[[Any], Any], sweep: list[int],
                      spec: ProfileSpec) -> tuple[dict[str, float], dict[str, str]]:
    """Inferences per second at each batch size of the sweep, and the sizes skipped (with why)."""
    tp_seconds = spec.per_batch_seconds()
    throughput: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for b in sweep:
        if loaded.static_batch is not None and b != loaded.static_batch:
            skipped[str(b)] = f"static batch dim {loaded.static_batch}"
            continue
        batches = [to_input(x) for x in _batches(pool, b, 2)]
        for x in batches:  # first call at a new shape re-plans memory: keep it out of the timing
            loaded.run(x)
        per_call, _, _ = timed_calls(loaded.run, batches, 3, tp_seconds, spec.max_seconds)
        throughput[str(b)] = b * len(per_call) / (sum(per_call) / 1e3)
    return throughput, skipped


def _record(spec: ProfileSpec, loaded: _Loaded, source: str, lat: _Latency, load_info: dict[str, Any],
            throughput: dict[str, float], skipped: dict[str, str]) -> dict[str, Any]:
    """The result record (less wall_seconds); reads the peak RSS now, after every measurement."""
    from edgekd.profile.measure.energy import measured_or_estimate

    tb = spec.throughput_batch
    if str(tb) not in throughput and throughput:
        tb = max(int(k) for k in throughput)
    peak = peak_rss()
    cpu_per_inf = lat.cpu_s / len(lat.samples)
    out: dict[str, Any] = {
        "name": spec.display_name,
        "kind": spec.kind,
        "path": spec.path,
        "runtime": loaded.runtime,
        "runtime_version": loaded.version,
        "providers": loaded.providers,
        "threads": spec.threads,
        "input_shape": loaded.shape,
        "input_source": source,
        "latency_ms": summarize(lat.samples),
        "samples": len(lat.samples),
        "timed_seconds": lat.timed_s,
        "hit_max_seconds": len(lat.samples) < spec.min_runs or lat.timed_s < spec.min_seconds,
        "warmup_runs_done": lat.warm,
        "warmup_seconds_done": lat.warm_s,
        "cpu_seconds_total": lat.cpu_s,
        "cpu_seconds_per_inference": cpu_per_inf,
        "throughput_batch": tb,
        "throughput_per_s": throughput.get(str(tb)),
        "throughput_sweep": throughput,
        "throughput_skipped": skipped,
        **load_info,  # load_seconds, rss_before_load_bytes, rss_after_load_bytes
        "peak_rss_bytes": peak,
        "peak_rss_delta_bytes": peak - load_info["rss_before_load_bytes"],
        "energy_measured": lat.energy_measured,
        "python": platform.python_version(),
    }
    if spec.device is not None:
        out["energy"] = measured_or_estimate(cpu_per_inf, spec.device, lat.energy_measured)
    return out


def run_spec(spec_in: ProfileSpec | dict) -> dict:
    """Profile one model as the spec says; returns the result record."""
    wall0 = time.perf_counter()
    spec = load_spec(ProfileSpec, spec_in)
    if spec.kind == "sgemm":
        return _sgemm_record(spec, wall0)
    if not spec.path:
        raise UserError("the profile spec has no 'path'", hint="name the model file to profile")

    loaded, load_info = _load_measured(spec)
    shape = loaded.shape
    if shape[0] != 1:
        raise UserError(f"input_shape {shape} must have batch 1", hint="give the shape of one sample, e.g. [1, 1, 28, 28]")
    sweep = spec.sweep()
    pool, source = _sample_pool(spec, shape, loaded.dtype, max(sweep))
    to_input = getattr(loaded, "to_tensor", lambda a: a)
    singles = [to_input(b) for b in _batches(pool, 1, min(pool.shape[0], 64))]

    lat = _measure_latency(loaded, singles, spec)
    throughput, skipped = _throughput_sweep(loaded, pool, to_input, sweep, spec)
    out = _record(spec, loaded, source, lat, load_info, throughput, skipped)
    out["wall_seconds"] = time.perf_counter() - wall0
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m edgekd.profile.worker SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    spec_path, out_path = Path(args[0]), Path(args[1])
    try:
        result = run_spec(load_spec(ProfileSpec, spec_path.read_text()))
        from edgekd.fsio import write_json_atomic

        write_json_atomic(out_path, result)  # the runner never reads a half-written result
    except EdgekdError as e:
        print(f"edgekd-worker: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    except Exception as e:  # the runner reports the last stderr line: make it the cause, after the trace
        traceback.print_exc()
        one_line = " | ".join(str(e).split("\n"))[:500]
        print(f"edgekd-worker: {type(e).__name__}: {one_line}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
