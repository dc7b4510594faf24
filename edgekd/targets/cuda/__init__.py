"""cuda: onnxruntime's CUDA provider (or torch on CUDA), NVML energy where the driver has it."""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Callable

from edgekd.targets.base import (Capability, Profiled, TargetFamily, check_common, check_providers, has_module,
                                 host_proxy, torch_teacher_row)
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


def _matches(target: "TargetConfig") -> bool:
    return target.runtime == "torch" or (target.runtime == "onnxruntime" and "CUDAExecutionProvider" in target.providers)


def _where_profiled(target: "TargetConfig") -> Profiled:
    """onnxruntime's CUDA provider runs the candidates on the GPU: the card's figures apply.
    Without that provider the profile runs on this host's CPU, a host proxy."""
    if "CUDAExecutionProvider" in target.providers:
        return "device", _gpu_name() or target.device.name, target.device
    return host_proxy(target)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _teacher_on_gpu(load_model: Callable[[], Any], example: Any, target: "TargetConfig") -> tuple[str, dict] | None:
    """The PyTorch teacher on the GPU with NVML energy (reported gross), when torch sees CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    from edgekd.profile.measure.energy import NvmlSampler

    return torch_teacher_row(load_model, example, target, "cuda", NvmlSampler(0))


def _visible_gpu() -> str | None:
    """Name of the first NVIDIA GPU nvidia-smi lists, without importing torch or pynvml."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=False).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def _resolve() -> tuple[str, dict[str, object], str]:
    """--target cuda: the visible GPU's name on the cuda card, else the card as shipped."""
    gpu = _visible_gpu()
    if gpu is None:
        return "cuda", {}, "--target cuda: no NVIDIA GPU visible (nvidia-smi); using the cuda card (H100 figures)"
    return "cuda", {"target.device.name": f"{gpu} (visible GPU; roofline figures of the cuda card)"}, \
        f"--target cuda: {gpu} visible; cuda card"


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
    matches=_matches, claims="runtime torch, or onnxruntime with CUDAExecutionProvider",
    where_profiled=_where_profiled, profile_teacher_on_device=_teacher_on_gpu, resolve=_resolve,
)
