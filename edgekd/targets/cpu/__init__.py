"""cpu: onnxruntime on the host's CPU; the ONNX candidates are the shipped artifacts."""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.targets.base import Capability, TargetFamily, check_common, check_providers, has_module

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import DeviceConfig, TargetConfig


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


def _check(target: "TargetConfig") -> None:
    check_common(target, FAMILY)
    check_providers(target)


FAMILY = TargetFamily(
    name="cpu", summary="onnxruntime on this host's CPU", formats=frozenset({"onnx"}),
    check=_check, availability=ort_providers, required=("onnxruntime providers",),
)


def host_device() -> "DeviceConfig":
    """This host's CPU as a DeviceConfig: the cpu card's per-core figures under the host CPU's name.

    Host-proxy rows of other targets (a mobile artifact timed on x86, the ONNX candidates of an
    Ascend build) take their roofline peak and energy-estimate power from here, never from the
    target card's device: host time x device power would describe no machine.
    """
    from edgekd.cards import load_target
    from edgekd.hostinfo import cpu_name

    d = load_target("cpu").device
    return d.model_copy(update={"name": f"{cpu_name()} (this host)"})
