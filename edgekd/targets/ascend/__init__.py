"""ascend: a bundle (static ONNX linted against CANN's op list, atc/msit scripts) written on any
host; atc, msit and npu-smi run where CANN and an NPU are present."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.targets.base import (Capability, ClassifierPayload, ConvertJob, LanguageModelPayload, TargetFamily,
                                 check_common)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig


def _availability(target: "TargetConfig") -> list[Capability]:
    from edgekd.runtimes.torch_device import torch_npu_status

    atc = shutil.which("atc")
    msit = shutil.which("msit")
    smi = shutil.which("npu-smi")
    ok_npu, reason_npu = torch_npu_status()
    return [
        ("bundle (no CANN needed)", True, "static ONNX + op lint + convert.sh/benchmark.sh are written on any host"),
        ("atc conversion", atc is not None, atc or "atc not on PATH — source CANN's set_env.sh on a host with the toolkit"),
        ("msit benchmark", msit is not None, msit or "msit not on PATH — pip install msit on the Ascend host"),
        ("npu-smi power", smi is not None, smi or "npu-smi not on PATH (Ascend driver not installed)"),
        ("model.om latency + energy on the NPU", bool(atc and msit and smi),
         "atc, msit and npu-smi present: measured_on device, energy npu-smi" if atc and msit and smi
         else "needs atc, msit and npu-smi: the bundle row is the card's roofline estimate"),
        ("teacher on the NPU (torch_npu)", ok_npu, reason_npu),
    ]


def _matches(target: "TargetConfig") -> bool:
    return target.runtime == "ascend"


def _resolve() -> tuple[str, dict[str, object], str]:
    """--target ascend: the SoC `npu-smi info` reports (its card, soc_version set to the chip),
    else ascend-310p."""
    from edgekd.targets.ascend.device import detect_ascend_soc

    card = "ascend-310p"
    soc, how = detect_ascend_soc()
    if soc is None:
        return card, {}, f"--target ascend: no Ascend NPU here ({how}); building for {card} (Ascend310P3)"
    card = "ascend-910b" if soc.startswith("Ascend910") else card
    return card, {"target.ascend.soc_version": soc}, f"--target ascend: {how}; card {card}, soc_version {soc}"


def _teacher_on_npu(load_model: Any, example: Any, target: "TargetConfig") -> tuple[str, dict] | None:
    from edgekd.targets.ascend.device import teacher_on_npu

    return teacher_on_npu(load_model, example, target)


def _check(target: "TargetConfig") -> None:
    from edgekd.targets.ascend.bundle import check_target

    check_common(target, FAMILY)
    check_target(target)  # soc_version, precision mode, static shapes, ATC's opset range


def _static_flops(path: Path) -> tuple[float, int] | None:
    from edgekd.errors import StageError
    from edgekd.profile.measure.flops import onnx_flops

    try:
        info = onnx_flops(path)
    except StageError:
        return None
    return float(info["flops"]), int(info["params"])


def bundle_rows(bundle: Path, manifest: dict[str, Any], device: dict[str, Any], target: "TargetConfig",
                params: int | None) -> list[dict[str, Any]]:
    """The report row of the bundle: model.om measured on the NPU (msit + npu-smi) when this host
    has one, else the card's roofline estimate (card time x card power). Accuracy is the static
    ONNX's on the test split, measured on this host; the FP16-simulated accuracy beside it."""
    import numpy as np

    from edgekd.profile.measure.flops import roofline
    from edgekd.targets.estimate import roofline_estimate

    om = bundle / "model.om"
    art = om if om.is_file() else bundle / "model.onnx"
    prec = manifest.get("precision_preflight") or {}
    fl = _static_flops(bundle / "model.onnx")
    mode = manifest.get("precision_mode")
    wbytes = (params or 0) * (4 if mode in ("must_keep_origin_dtype", "force_fp32") else 2)
    io = float(np.prod(manifest["input"]["shape"]) * (8 if manifest["input"]["dtype"] == "int64" else 4)
               + sum(np.prod(o["shape"]) * 4 for o in manifest["outputs"]))
    row: dict[str, Any] = {
        "role": "student", "variant": "ascend-om", "format": "om" if om.is_file() else "onnx (static, for atc)",
        "path": str(art.relative_to(bundle.parent)), "params": params, "size_bytes": art.stat().st_size,
        "accuracy": (manifest.get("accuracy") or {}).get("static_onnx_fp32"), "accuracy_measured_on": "host",
        "accuracy_fp16_simulated": prec.get("accuracy_with_keep") if prec.get("keep_fp32") else prec.get("fp16_accuracy"),
        "precision_mode": mode, "keep_fp32_layers": prec.get("keep_fp32") or [],
        "peak_rss_bytes": None, "throughput_batch": manifest["input"]["shape"][0],
        "flops": {"flops": fl[0]} if fl else None}
    if device.get("status") == "ok":
        lat = device["latency_ms"]
        row.update({"runtime": "msit benchmark (CANN)", "measured_on": "device", "device": device["device"],
                    "latency_ms": {"p50": lat.get("p50"), "p90": lat.get("p90"), "p99": lat.get("p99"),
                                   "mean": lat.get("mean"), "n": device["loop"], "min": lat.get("min"),
                                   "max": lat.get("max"), "what": device["latency_what"]},
                    "throughput_per_s": device.get("throughput_per_s"), "energy": device["energy"],
                    "roofline": roofline(fl[0], wbytes + io, lat["p50"], target.device) if fl and lat.get("p50") else None})
        return [row]
    est = roofline_estimate(fl[0], wbytes, io, target.device, "fp16") if fl else None
    v = est["latency_ms"] if est else None
    row.update({"runtime": "ascend (model.om not run: " + device.get("reason", "no NPU") + ")", "measured_on": "estimate",
                "device": target.device.name,
                "latency_ms": {"p50": v, "p90": None, "p99": None, "mean": v, "n": None, "method": "estimate-roofline"},
                "throughput_per_s": None,  # 1/latency of a lower-bound estimate would add nothing
                "energy": est["energy"] if est else None, "estimate": est, "roofline": None})
    return [row]


def _convert(job: ConvertJob) -> tuple[dict[str, str], dict[str, Any]]:
    from edgekd.targets.ascend.bundle import write_bundle
    from edgekd.targets.ascend.device import profile_on_device
    from edgekd.zoo import count_params

    if isinstance(job.payload, LanguageModelPayload):  # static prefill/decode graphs with the KV cache as tensors
        from edgekd.targets.ascend.lm import convert_lm

        return convert_lm(job)
    input_name, x_check, expected, calib = job.single_io("the Ascend bundle")
    cls = job.payload if isinstance(job.payload, ClassifierPayload) else None
    # A classifier's static graph reports test accuracy and gets the FP16 preflight; without a
    # classifier payload the bundle is still linted, parity-checked and scripted.
    evaluation = (cls.x_test, cls.y_test, cls.x_val) if cls is not None and cls.x_test is not None else None
    manifest = write_bundle(job.onnx_path, job.wd, job.target, input_name, job.input_shapes[input_name], x_check,
                            expected, allow_unsupported=bool(job.options.get("allow_unsupported")),
                            evaluation=evaluation, budget_points=job.budget_points, calib=calib, log=job.log)
    bundle = job.wd / "ascend"
    device = profile_on_device(bundle, job.target.ascend)
    if job.log:
        job.log(f"  ascend: model.om on the NPU: {device['status']}" + (f" ({device['reason']})" if "reason" in device else ""))
    rows = bundle_rows(bundle, manifest, device, job.target, count_params(job.student) if job.student is not None else None)
    outputs = {p.name: str(p.relative_to(job.wd)) for p in sorted(bundle.rglob("*")) if p.is_file()}
    where = {"ran": [], "not_run": []}
    where["ran"].append("static ONNX parity, test accuracy and FP16 preflight: this host (onnxruntime)")
    prec = manifest.get("precision_preflight") or {}
    if prec.get("fp16_accuracy") is not None:
        kept = (f"; {len(prec['keep_fp32'])} layer(s) kept in FP32 via keep_dtype.cfg -> {prec['accuracy_with_keep']:.2%}"
                if prec.get("keep_fp32") else "")
        where["ran"].append(f"FP16 preflight ({prec['mode']}, host simulation, test split): FP32 {prec['fp32_accuracy']:.2%}, "
                            f"FP16 {prec['fp16_accuracy']:.2%} ({prec['drop_points']:+.2f} points drop){kept}")
    if device["status"] == "ok":
        where["ran"].append(f"model.om latency/energy: {device['device']} (msit benchmark, npu-smi)")
    else:
        where["not_run"].append(f"model.om on the NPU: {device['reason']}; its row is the card's roofline estimate")
    if manifest.get("amct"):
        where["not_run"].append("AMCT INT8 calibration: needs the CANN toolkit (bundle amct/calibrate.py)")
    return outputs, {"bundle": "ascend", "selected": job.selected, "manifest": manifest, "device": device,
                     "models": rows, "selected_artifact": "student/ascend-om", "where": where}


# The bundle is made from the selected candidate's ONNX and ATC parses it (edgekd/targets/ascend/cann_ops.json:
# no parser for the quantization ops ORT/NNCF write; tests/targets/test_candidates_on_targets.py
# lints each kind's graph against that table). FP16 on the NPU is ATC's precision_mode, applied to
# the FP32 graph and measured by the bundle's FP16 preflight.
CANNOT_SHIP = {
    "fp16": "the NPU's FP16 is ATC's precision_mode on the FP32 graph, measured by the bundle's FP16 preflight",
    "dynamic": "ATC has no parser for DynamicQuantizeLinear/MatMulInteger",
    "static": "ATC has no parser for QuantizeLinear/DequantizeLinear",
    "weight-only": "ATC has no parser for DequantizeLinear/MatMulNBits",
}

FAMILY = TargetFamily(
    name="ascend", summary="Huawei Ascend NPU via CANN (ATC .om, msit, npu-smi)", formats=frozenset({"onnx", "om"}),
    check=_check, availability=_availability, required=("bundle (no CANN needed)",), convert=_convert,
    tasks=frozenset({"classification", "text-generation"}),
    matches=_matches, claims="runtime ascend", profile_teacher_on_device=_teacher_on_npu, resolve=_resolve,
    cannot_ship=CANNOT_SHIP,
    cannot_ship_hint="INT8 on Ascend goes through AMCT: the bundle carries amct/calibrate.py and a calibration batch "
                     "(run on a CANN host)",
)
