"""Profile a torch model on a torch device: cpu, cuda or npu (Ascend, through torch_npu).

The runtime half only: each target family's device profiler (edgekd.targets.cuda / .ascend) calls
`profile_torch_device` with its own power sampler; msit/npu-smi readers live in targets/ascend/.

torch_npu is never imported at module level, and not even probed in this process unless it is
needed: on a host without CANN, importing it can break `import torch` itself (see
ENVIRONMENT.md), so availability is checked in a subprocess with a timeout.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from edgekd.errors import StageError, TargetUnavailable, UserError
from edgekd.profile.measure.stats import summarize

DEVICES = ("cpu", "cuda", "npu")
_NPU_INSTALL_HINT = "torch_npu not importable — install the 'ascend' extra on a host with CANN"
_PROBE = (
    "import torch, torch_npu\n"
    "n = torch.npu.device_count() if torch.npu.is_available() else 0\n"
    "print('EDGEKD_NPU', torch_npu.__version__, n)\n"
)


class PowerSampler(Protocol):
    """Anything with start() and stop(); stop() returns joules, a list of watts, or (t_s, watts) pairs.
    The samplers of edgekd.profile.measure.energy (rapl, nvml, npu-smi) fit: their stop() returns joules."""

    def start(self) -> None: ...

    def stop(self) -> Any: ...


@lru_cache(maxsize=1)
def torch_npu_status(timeout_s: float = 60.0) -> tuple[bool, str]:
    """(available, reason). Cached: the probe starts a Python process that imports torch."""
    if "torch_npu" in sys.modules:  # already imported here (an NPU host): ask it directly
        import torch

        n = torch.npu.device_count() if torch.npu.is_available() else 0
        return (n > 0, f"torch_npu loaded, {n} NPU(s)" if n else "torch_npu loaded but no NPU is visible (check npu-smi info)")
    if importlib.util.find_spec("torch_npu") is None:
        return False, _NPU_INSTALL_HINT
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False, f"importing torch_npu timed out after {timeout_s:.0f} s (is CANN's set_env.sh sourced?)"
    for line in proc.stdout.splitlines():
        if line.startswith("EDGEKD_NPU "):
            _, version, count = line.split()
            if int(count) > 0:
                return True, f"torch_npu {version}, {count} NPU(s)"
            return False, f"torch_npu {version} imports but no NPU is visible (check the driver: npu-smi info)"
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"torch_npu is installed but does not import ({err}); source CANN's set_env.sh on an NPU host"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "npu":
        torch.npu.synchronize()


def _check_device(device: str) -> None:
    import torch

    if device not in DEVICES:
        raise UserError(f"unknown torch device '{device}'", hint=f"valid: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetUnavailable("CUDA is not available to torch here",
                                hint="run on a host with an NVIDIA GPU and a CUDA build of torch")
    if device == "npu":
        ok, reason = torch_npu_status()
        if not ok:
            raise TargetUnavailable(f"Ascend NPU unavailable: {reason}",
                                    hint="run on an Ascend host with CANN and `pip install edgekd[ascend]`")
        import torch_npu  # noqa: F401  (registers the npu device with torch)


def _joules(value: Any, seconds: float) -> float:
    """Energy from a sampler's stop(): joules, {'joules': J}, [(t_s, watts), ...] or [watts, ...]."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping) and "joules" in value:
        return float(value["joules"])
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 0:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):  # ragged or non-numeric samples: reported below
            arr = np.empty((0,))
        if arr.ndim == 2 and arr.shape[1] == 2 and len(arr) >= 2:
            return float(np.trapezoid(arr[:, 1], arr[:, 0]))
        if arr.ndim == 1 and arr.size:
            return float(arr.mean() * seconds)  # mean power over the timed window
    raise StageError(f"power sampler returned {type(value).__name__} that edgekd cannot read as energy",
                     hint="stop() should return joules, a list of watts, or a list of (seconds, watts) pairs")


def _peak_memory(device: str) -> tuple[int, str]:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    if device == "npu":
        return int(torch.npu.max_memory_allocated()), "torch.npu.max_memory_allocated"
    import resource

    # ru_maxrss is KiB on Linux: the process's peak resident set, including the model and torch.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS (ru_maxrss)"


PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def profile_torch_device(model: Any, example: Any, device: str = "cpu", runs: int = 100, warmup: int = 10,
                         sampler: PowerSampler | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Synchronized per-call latency, peak memory and (with a sampler) energy of `model(example)`.

    `precision` fp16 / bf16 runs the model under torch.autocast on the device (mixed precision: the
    matmuls and convolutions in half precision, reductions in fp32), as a user would serve it on a
    GPU or NPU. The model is moved to `device` for the measurement and moved back afterwards.
    """
    import contextlib

    import torch

    if runs < 1 or warmup < 0:
        raise UserError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})",
                        hint="set at least 1 timed run and a non-negative warmup")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'", hint=f"valid: {', '.join(PRECISIONS)}")
    _check_device(device)
    amp = (torch.autocast(device_type=device, dtype=getattr(torch, PRECISIONS[precision]))
           if PRECISIONS[precision] else contextlib.nullcontext())
    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        x = example.to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif device == "npu":
            torch.npu.reset_peak_memory_stats()
        times: list[float] = []
        with torch.inference_mode(), amp:
            for _ in range(warmup):
                model(x)
            _sync(device)
            t_sampler = time.perf_counter()
            if sampler is not None:
                sampler.start()
            t_start = time.perf_counter()
            for _ in range(runs):
                t0 = time.perf_counter()
                model(x)
                _sync(device)  # kernels are asynchronous on cuda/npu: time until they finish
                times.append(time.perf_counter() - t0)
            window = time.perf_counter() - t_start
            energy_raw = sampler.stop() if sampler is not None else None
            # The sampler sees start()..stop(), a little more than the loop: that is its window.
            sampler_window = time.perf_counter() - t_sampler
        peak, mem_method = _peak_memory(device)
    finally:
        model.to(home)
        model.train(was_training)
    ms = np.asarray(times) * 1e3
    batch = int(example.shape[0]) if getattr(example, "ndim", 0) else 1
    result: dict[str, Any] = {
        "device": device,
        "device_name": _device_name(device),
        "torch_version": torch.__version__,
        "batch": batch,
        "precision": precision,
        "warmup": warmup,
        "latency_ms": summarize(ms.tolist()),  # same statistics as every other latency in a report
        "throughput_per_s": float(batch * runs / window) if window > 0 else None,
        "peak_memory_bytes": peak,
        "peak_memory_method": mem_method,
        "energy": None,
    }
    if sampler is not None:
        joules = _joules(energy_raw, sampler_window)
        # Per call of model(example) (one batch), like latency_ms. Sampler start/stop overhead is
        # counted in: keep runs long next to the counter's update period (NVML: 20–100 ms).
        result["energy"] = {"joules_per_inference": joules / runs, "joules_total": joules,
                            "window_s": sampler_window, "loop_s": window,
                            "method": str(getattr(sampler, "method", type(sampler).__name__))}
    return result


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    if device == "npu":
        return str(torch.npu.get_device_name())
    from edgekd.hostinfo import cpu_name

    return cpu_name()
