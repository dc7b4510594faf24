"""ascend: a bundle (static ONNX linted against CANN's op list, atc/msit scripts) written on any
host; atc, msit and npu-smi run where CANN and an NPU are present."""
from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from edgekd.targets.base import Capability, ConvertJob, TargetFamily, check_common

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig


def _availability(target: "TargetConfig") -> list[Capability]:
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


def _check(target: "TargetConfig") -> None:
    from edgekd.export.ascend import check_target

    check_common(target, FAMILY)
    check_target(target)  # soc_version, precision mode, static shapes, ATC's opset range


def _convert(job: ConvertJob) -> tuple[dict[str, str], dict[str, Any]]:
    from edgekd.export.ascend import write_bundle

    manifest = write_bundle(job.onnx_path, job.wd, job.target, job.input_name, job.input_shape, job.x_check,
                            job.expected, allow_unsupported=bool(job.options.get("allow_unsupported")))
    outputs = {p.name: str(p.relative_to(job.wd)) for p in sorted((job.wd / "ascend").rglob("*")) if p.is_file()}
    return outputs, {"bundle": "ascend", "selected": job.selected, "manifest": manifest}


FAMILY = TargetFamily(
    name="ascend", summary="Huawei Ascend NPU via CANN (ATC .om, msit, npu-smi)", formats=frozenset({"onnx", "om"}),
    check=_check, availability=_availability, required=("bundle (no CANN needed)",), convert=_convert,
)
