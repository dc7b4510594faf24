"""cuda: onnxruntime's CUDA provider (or torch on CUDA), NVML energy where the driver has it."""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from edgekd.targets.base import Capability, TargetFamily, check_common, check_providers, has_module
from edgekd.targets.cpu import ort_providers

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig


def nvml() -> Capability:
    """NVML energy needs both the driver's libnvidia-ml and the pynvml bindings (nvidia-ml-py)."""
    lib_ok = None
    for lib in ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll"):
        try:
            ctypes.CDLL(lib)
            lib_ok = lib
            break
        except OSError:
            continue
    if lib_ok is None:
        return ("NVML energy counters", False, "libnvidia-ml not found (no NVIDIA driver): energy is an estimate")
    if not has_module("pynvml"):
        return ("NVML energy counters", False, f"{lib_ok} loads but pynvml is missing — pip install 'edgekd[cuda]'")
    return ("NVML energy counters", True, f"{lib_ok} + pynvml")


def torch_cuda() -> Capability:
    import torch

    if torch.cuda.is_available():
        return ("torch CUDA (teacher on GPU)", True, torch.cuda.get_device_name())
    build = "CPU-only torch build" if torch.version.cuda is None else "no CUDA device visible"
    return ("torch CUDA (teacher on GPU)", False, f"torch {torch.__version__}: {build}")


def _availability(target: "TargetConfig") -> list[Capability]:
    if target.runtime == "torch":
        if not has_module("torch"):
            return [("torch", False, "torch is not installed")]
        return [("torch", True, "torch importable"), torch_cuda()]
    return ort_providers(target) + [torch_cuda(), nvml()]


def _check(target: "TargetConfig") -> None:
    check_common(target, FAMILY)
    if target.runtime == "onnxruntime":
        check_providers(target)


# Every candidate kind ships here (no cannot_ship): onnxruntime's CUDA provider loads any ONNX the
# CPU provider loads, placing nodes without a CUDA kernel on the CPU provider; the profile stage
# times each candidate as it runs, and the selection marks a slow one slower-than-fp32.
FAMILY = TargetFamily(
    name="cuda", summary="NVIDIA GPU through onnxruntime-gpu / torch CUDA, NVML energy", formats=frozenset({"onnx"}),
    check=_check, availability=_availability, required=("onnxruntime providers", "torch"),
)
