"""mobile: ExecuTorch .pte (XNNPACK) and ORT-format .ort, run on the host through their real
runtimes; on a phone through adb."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.targets.base import (Capability, ClassifierPayload, ConvertJob, LanguageModelPayload, TargetFamily,
                                 check_common, has_module)
from edgekd.targets.mobile.select import select_artifact  # the one rule of both converters (re-exported)

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


def _matches(target: "TargetConfig") -> bool:
    return target.runtime == "executorch"


def _attached_phone() -> str | None:
    import subprocess

    adb = shutil.which("adb")
    if adb is None:
        return None
    try:
        lines = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=20).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return None
    serials = [ln.split()[0] for ln in lines if len(ln.split()) >= 2 and ln.split()[1] == "device"]
    return serials[0] if serials else None


def _resolve() -> tuple[str, dict[str, object], str]:
    """--target mobile: the mobile card; the line says whether a phone is attached."""
    phone = _attached_phone()
    if phone is None:
        return "mobile", {}, "--target mobile: no phone attached (adb); on-device figures are estimates of the mobile card"
    return "mobile", {}, f"--target mobile: phone {phone} attached; time the bundle on it with edgekd profile BUILD --adb {phone}"


_VARIANTS = {"model_fp32.pte": "pte-fp32", "model_int8.pte": "pte-int8", "model.ort": "ort-fp32"}


def estimate_energy(cpu_seconds: float, host: Any) -> dict[str, Any]:
    from edgekd.profile.measure.energy import estimate_energy as _estimate

    return _estimate(cpu_seconds, host)


def artifact_rows(meta: dict[str, Any], params: int | None, host: Any) -> list[dict[str, Any]]:
    """Two report rows per shipped artifact: its host-proxy timing (measured_on host, this CPU's
    figures for energy) and the on-device estimate (measured_on estimate: the card's roofline time
    x the card's power). Accuracy is the artifact's own, through its own runtime, on the test split."""
    rows = []
    for name, a in meta["artifacts"].items():
        variant = _VARIANTS.get(name, name)
        acc = (a.get("accuracy") or {}).get("value")
        lat = a["latency_ms"]
        common = {"role": "student", "format": a["format"], "path": f"mobile/{name}", "params": params,
                  "size_bytes": a["size_bytes"], "accuracy": acc, "accuracy_runtime": (a.get("accuracy") or {}).get("runtime"),
                  "val_accuracy": (a.get("val_accuracy") or {}).get("value"),
                  "accuracy_measured_on": "host", "precision": a["precision"], "peak_rss_bytes": None,
                  "throughput_batch": 1}
        p50_s = lat["p50"] / 1e3
        # The same estimate as the profile stage's host rows (process CPU seconds x this host's
        # power per core), so the teacher/student energy ratio compares like with like.
        cpu_s = lat.get("cpu_seconds_per_inference")
        rows.append({**common, "variant": variant, "runtime": a["runtime"], "measured_on": "host",
                     "device": host.name,
                     "latency_ms": {k: lat.get(k) for k in ("p50", "p90", "p99", "mean", "n")},
                     "throughput_per_s": 1.0 / p50_s if p50_s > 0 else None,
                     "energy": estimate_energy(cpu_s if cpu_s is not None else p50_s, host)})
        est = a["estimate"]
        v = est["latency_ms"]
        rows.append({**common, "variant": f"{variant}-estimate", "runtime": f"{a['runtime']} (on-device estimate)",
                     "measured_on": "estimate", "device": est["device"],
                     "latency_ms": {"p50": v, "p90": None, "p99": None, "mean": v, "n": None, "method": est["method"]},
                     "throughput_per_s": None, "energy": est["energy"], "estimate": est})
    return rows


def _convert(job: ConvertJob) -> tuple[dict[str, str], dict[str, Any]]:
    import json

    if isinstance(job.payload, LanguageModelPayload):  # a KV-cache ExecuTorch program per candidate
        from edgekd.targets.mobile.lm import convert_language_model

        return convert_language_model(job)

    import torch

    from edgekd.targets.mobile.bundle import write_mobile_bundle
    from edgekd.zoo import count_params

    cls = _classifier(job)
    _, x_check, _, calib = job.single_io("the mobile bundle")
    evaluation = (cls.x_test, cls.y_test) if cls.x_test is not None else None
    validation = (cls.x_val, cls.y_val) if cls.x_val is not None and cls.y_val is not None else None
    info = write_mobile_bundle(job.wd, job.student, torch.as_tensor(x_check[:1]), job.fp32_onnx, calib,
                               x_check, cls.class_names, cls.normalization, job.target, evaluation=evaluation,
                               validation=validation)
    outputs = {p.name: str(p.relative_to(job.wd)) for p in sorted((job.wd / "mobile").rglob("*")) if p.is_file()}
    meta = json.loads((job.wd / "mobile" / "metadata.json").read_text())
    rows = artifact_rows(meta, count_params(job.student), job.host_device) if job.host_device is not None else []
    choice = select_artifact(rows, cls.student_val_accuracy, job.budget_points, cls.student_accuracy)
    where = {"ran": [f"artifact accuracy and host-proxy latency: this host ({job.host_device.name if job.host_device else 'host'})"],
             "not_run": ["on-phone latency: no --adb device; the on-device rows are card roofline estimates "
                         f"({job.target.device.name})"]}
    where["not_run"] += [f"{k}: {v}" for k, v in meta.get("skipped", {}).items()]
    return outputs, {"bundle": "mobile", "selected": job.selected, **info, "models": rows,
                     "selected_artifact": choice["selected"], "artifact_selection": choice, "where": where}


def _classifier(job: ConvertJob) -> ClassifierPayload:
    """The .pte/.ort bundle is built from a torch classifier (class names in its metadata, accuracy
    per artifact); language models take targets/mobile/lm.py; other tasks are refused rather than half-converted."""
    from edgekd.errors import UserError

    if job.student is None or not isinstance(job.payload, ClassifierPayload):
        raise UserError(f"target '{job.target.name}' (mobile) converts classifiers with a PyTorch student today",
                        hint="build this recipe with --target cpu, or a classifier recipe for mobile")
    return job.payload


# No cannot_ship: the bundle never carries an ONNX candidate. The .pte files are made from the
# torch student (fp32, and int8 through pt2e + the XNNPACK quantizer) and model.ort from the FP32
# ONNX, whatever the quantize stage selected; the candidates stay host rows of the report. A language
# model's programs (fp32, 8da4w, int8 weight-only, each with its KV cache) are made from the student's HF
# folder and chosen among themselves (targets/mobile/lm.py).
FAMILY = TargetFamily(
    name="mobile", summary="phone CPU via ExecuTorch (.pte, XNNPACK) or ORT Mobile (.ort)",
    formats=frozenset({"pte", "ort", "onnx"}), check=_check, availability=_availability,
    required=("executorch .pte", "ORT format conversion"), convert=_convert,
    tasks=frozenset({"classification", "text-generation"}),
    matches=_matches, claims="runtime executorch", resolve=_resolve,
)
