"""mobile: ExecuTorch .pte (XNNPACK) and ORT-format .ort, run on the host through their real
runtimes; on a phone through adb."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.targets.base import Capability, ConvertJob, TargetFamily, check_common, has_module

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig


def _availability(target: "TargetConfig") -> list[Capability]:
    has_et = has_module("executorch")
    # Look for the converter's file instead of find_spec("onnxruntime.tools"), which imports onnxruntime.
    ort_spec = importlib.util.find_spec("onnxruntime") if has_module("onnxruntime") else None
    has_ort_tools = bool(ort_spec and ort_spec.origin and
                         (Path(ort_spec.origin).parent / "tools" / "convert_onnx_models_to_ort.py").is_file())
    adb = shutil.which("adb")
    return [
        ("executorch .pte", has_et, "executorch importable" if has_et else "executorch not installed — pip install 'edgekd[mobile]'"),
        ("ORT format conversion", has_ort_tools,
         "onnxruntime.tools present" if has_ort_tools else "onnxruntime.tools missing (reinstall onnxruntime)"),
        ("on-device timing (adb)", adb is not None, adb or "adb not on PATH — no phone attached: timings are host proxies"),
    ]


def _check(target: "TargetConfig") -> None:
    check_common(target, FAMILY)


def _convert(job: ConvertJob) -> tuple[dict[str, str], dict[str, Any]]:
    import torch

    from edgekd.export.mobile import write_mobile_bundle

    info = write_mobile_bundle(job.wd, job.student, torch.as_tensor(job.x_check[:1]), job.fp32_onnx, job.calib,
                               job.x_check, job.class_names, job.normalization, job.target)
    outputs = {p.name: str(p.relative_to(job.wd)) for p in sorted((job.wd / "mobile").rglob("*")) if p.is_file()}
    return outputs, {"bundle": "mobile", "selected": job.selected, **info}


FAMILY = TargetFamily(
    name="mobile", summary="phone CPU via ExecuTorch (.pte, XNNPACK) or ORT Mobile (.ort)",
    formats=frozenset({"pte", "ort", "onnx"}), check=_check, availability=_availability,
    required=("executorch .pte", "ORT format conversion"), convert=_convert,
)
