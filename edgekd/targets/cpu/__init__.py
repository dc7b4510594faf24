"""cpu: onnxruntime on the host's CPU; the ONNX candidates are the shipped artifacts."""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.targets.base import (Capability, TargetFamily, check_common, check_providers, has_module,
                                 host_device, host_is_device)

__all__ = ["FAMILY", "host_device", "ort_providers"]  # host_device: defined in base, long imported from here

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig


def ort_providers(target: "TargetConfig") -> list[Capability]:
    """One row per provider the card names, plus an 'onnxruntime providers' summary row."""
    if not has_module("onnxruntime"):
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


def _matches(target: "TargetConfig") -> bool:
    return target.runtime == "onnxruntime" and "CUDAExecutionProvider" not in target.providers


def _check(target: "TargetConfig") -> None:
    check_common(target, FAMILY)
    check_providers(target)


FAMILY = TargetFamily(
    name="cpu", summary="onnxruntime on this host's CPU", formats=frozenset({"onnx"}),
    check=_check, availability=ort_providers, required=("onnxruntime providers",),
    matches=_matches, claims="runtime onnxruntime without CUDAExecutionProvider",
    # the host is the device: its runs are the device's figures under the host CPU's name
    where_profiled=host_is_device, host_cpu_profiled=host_is_device,
)
