"""What a target can do on this host: one row per capability, (name, available, reason).

Used by `edgekd targets` and before a build. Every probe is cheap and side-effect free: optional
SDKs are looked up with importlib.util.find_spec (not imported), torch_npu is probed in a
subprocess (importing it without CANN can break torch), binaries with shutil.which.
"""
from __future__ import annotations

import ctypes
import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig

Capability = tuple[str, bool, str]

# The capability a build cannot do without, per runtime; the others only add measurements.
_REQUIRED = {"onnxruntime": "onnxruntime providers", "ascend": "bundle (no CANN needed)", "torch": "torch"}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing or a broken __spec__: not importable
        return False


def _ort_providers(target: "TargetConfig") -> list[Capability]:
    if not _has_module("onnxruntime"):
        return [("onnxruntime providers", False, "onnxruntime is not installed")]
    import onnxruntime as ort

    available = ort.get_available_providers()
    rows: list[Capability] = []
    for p in target.providers:
        if p in available:
            rows.append((f"onnxruntime {p}", True, f"onnxruntime {ort.__version__}"))
        else:
            hint = " — install onnxruntime-gpu on a CUDA host" if p == "CUDAExecutionProvider" else ""
            rows.append((f"onnxruntime {p}", False, f"onnxruntime {ort.__version__} lacks {p}{hint}"))
    missing = [p for p in target.providers if p not in available]
    rows.insert(0, ("onnxruntime providers", not missing,
                    "all providers present" if not missing else f"missing {', '.join(missing)}"))
    return rows


def _nvml() -> Capability:
    for lib in ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll"):
        try:
            ctypes.CDLL(lib)
            return ("NVML energy counters", True, f"{lib} loads")
        except OSError:
            continue
    return ("NVML energy counters", False, "libnvidia-ml not found (no NVIDIA driver): energy is an estimate")


def _torch_cuda() -> Capability:
    import torch

    if torch.cuda.is_available():
        return ("torch CUDA (teacher on GPU)", True, torch.cuda.get_device_name())
    build = "CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
    return ("torch CUDA (teacher on GPU)", False, f"torch {torch.__version__}: {build}")


def _ascend() -> list[Capability]:
    from edgekd.runtimes.npu import torch_npu_status

    atc = shutil.which("atc")
    msit = shutil.which("msit")
    smi = shutil.which("npu-smi")
    ok_npu, reason_npu = torch_npu_status()
    return [
        ("bundle (no CANN needed)", True, "static ONNX + op lint + convert.sh/benchmark.sh are written on any host"),
        ("atc conversion", atc is not None, atc or "atc not on PATH — source CANN's set_env.sh on a host with the toolkit"),
        ("msit benchmark", msit is not None, msit or "msit not on PATH — pip install msit on the Ascend host"),
        ("on-device profiling", ok_npu, reason_npu),
        ("npu-smi power", smi is not None, smi or "npu-smi not on PATH (Ascend driver not installed)"),
    ]


def _mobile() -> list[Capability]:
    has_et = _has_module("executorch")
    # Look for the converter's file instead of find_spec("onnxruntime.tools"), which imports onnxruntime.
    ort_spec = importlib.util.find_spec("onnxruntime") if _has_module("onnxruntime") else None
    has_ort_tools = bool(ort_spec and ort_spec.origin and
                         (Path(ort_spec.origin).parent / "tools" / "convert_onnx_models_to_ort.py").is_file())
    adb = shutil.which("adb")
    return [
        ("executorch .pte", has_et, "executorch importable" if has_et else "executorch not installed — pip install 'edgekd[mobile]'"),
        ("ORT format conversion", has_ort_tools,
         "onnxruntime.tools present" if has_ort_tools else "onnxruntime.tools missing (reinstall onnxruntime)"),
        ("on-device timing (adb)", adb is not None, adb or "adb not on PATH — no phone attached: timings are host proxies"),
    ]


def target_availability(target: "TargetConfig") -> list[Capability]:
    """(capability, available, reason) rows for `target` on this host; never raises for a missing SDK."""
    if target.runtime == "ascend":
        return _ascend()
    if target.runtime == "executorch":
        return _mobile()
    if target.runtime == "torch":
        if not _has_module("torch"):
            return [("torch", False, "torch is not installed")]
        return [("torch", True, "torch importable"), _torch_cuda()]
    rows = _ort_providers(target)
    if "CUDAExecutionProvider" in target.providers:
        rows += [_torch_cuda(), _nvml()]
    return rows


def build_ready(target: "TargetConfig", rows: list[Capability] | None = None) -> tuple[bool, str]:
    """Whether `edgekd build --target` can produce the target's artifacts here, and why not.
    Ascend: always (the bundle needs no CANN). Mobile: either .pte or .ort conversion works."""
    rows = rows if rows is not None else target_availability(target)
    if target.runtime == "executorch":
        usable = [name for name, ok, _ in rows if ok and name in ("executorch .pte", "ORT format conversion")]
        if usable:
            return True, f"{' and '.join(usable)} available"
        return False, "; ".join(reason for name, ok, reason in rows if not ok)
    required = _REQUIRED[target.runtime]
    for name, ok, reason in rows:
        if name == required:
            return ok, reason
    return False, f"capability '{required}' was not probed"
