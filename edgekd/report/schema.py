"""The report.json contract (ARCHITECTURE.md), its checker and loader, and atomic file writes."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgekd.errors import UserError

REPORT_SCHEMA_VERSION = 1

# "more keys are welcome; these must exist"
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "report": ("schema_version", "recipe", "target", "created", "edgekd_version", "environment", "models",
               "selected", "comparison"),
    "environment": ("cpu", "threads", "runtimes"),
    "model": ("role", "variant", "format", "runtime", "path", "params", "size_bytes", "accuracy", "latency_ms",
              "throughput_per_s", "peak_rss_bytes", "energy"),
    "latency_ms": ("p50", "p90", "p99", "mean", "n"),
    "energy": ("joules_per_inference", "method"),
    "comparison": ("speedup_p50", "size_ratio", "peak_rss_ratio", "energy_ratio", "accuracy_retention"),
    "candidate": ("variant", "format", "path", "accuracy", "val_accuracy", "latency_ms", "size_bytes", "status"),
}
ROLES = ("teacher", "student")
MEASURED_ON = ("device", "host", "estimate")  # where a row's latency/energy figures come from
MEASURED_ENERGY_METHODS = ("rapl", "nvml", "npu-smi")
CANDIDATE_STATUSES = ("selected", "over-budget", "slower-than-fp32", "within-noise-of-fp32", "larger-than-fp32", "kept",
                      "unsupported-on-target")  # or "failed: <reason>"


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _opt_num(x: Any) -> bool:
    return x is None or _num(x)


def energy_is_valid(method: Any) -> bool:
    return isinstance(method, str) and (method in MEASURED_ENERGY_METHODS or
                                        (method.startswith("estimate-") and len(method) > len("estimate-")))


def _missing(d: dict, kind: str, where: str) -> list[str]:
    return [f"{where}: missing '{k}'" for k in REQUIRED_KEYS[kind] if k not in d]


def _check_model(m: Any, where: str) -> list[str]:
    if not isinstance(m, dict):
        return [f"{where}: not an object"]
    errs = _missing(m, "model", where)
    if "role" in m and m["role"] not in ROLES:
        errs.append(f"{where}.role: '{m['role']}' is not one of {', '.join(ROLES)}")
    for k in ("params", "size_bytes", "peak_rss_bytes"):
        if k in m and not (_opt_num(m[k]) and (m[k] is None or m[k] >= 0)):
            errs.append(f"{where}.{k}: expected a non-negative number or null, got {m[k]!r}")
    if "accuracy" in m and m["accuracy"] is not None and not (_num(m["accuracy"]) and 0 <= m["accuracy"] <= 1):
        errs.append(f"{where}.accuracy: expected a fraction in [0, 1] or null, got {m['accuracy']!r}")
    if "throughput_per_s" in m and not _opt_num(m["throughput_per_s"]):
        errs.append(f"{where}.throughput_per_s: expected a number or null")
    lat = m.get("latency_ms")
    if "latency_ms" in m:
        if not isinstance(lat, dict):
            errs.append(f"{where}.latency_ms: expected an object")
        else:
            errs += _missing(lat, "latency_ms", f"{where}.latency_ms")
            # null where the source has no such figure (msit prints no p90; an estimate is one number)
            for k in REQUIRED_KEYS["latency_ms"]:
                if k in lat and not (lat[k] is None or (_num(lat[k]) and lat[k] >= 0)):
                    errs.append(f"{where}.latency_ms.{k}: expected a non-negative number or null, got {lat[k]!r}")
            if m.get("measured_on") != "estimate" and not _num(lat.get("p50")):
                errs.append(f"{where}.latency_ms.p50: a measured row needs a p50")
    if "measured_on" in m and m["measured_on"] not in MEASURED_ON:
        errs.append(f"{where}.measured_on: '{m['measured_on']}' is not one of {', '.join(MEASURED_ON)}")
    if "measured_on" in m and not m.get("device"):
        errs.append(f"{where}.device: a row with measured_on needs the device's name")
    en = m.get("energy")
    if "energy" in m:
        if not isinstance(en, dict):
            errs.append(f"{where}.energy: expected an object")
        else:
            errs += _missing(en, "energy", f"{where}.energy")
            if "method" in en and not energy_is_valid(en["method"]):
                errs.append(f"{where}.energy.method: '{en['method']}' is neither measured "
                            f"({', '.join(MEASURED_ENERGY_METHODS)}) nor 'estimate-<model>'")
            if "joules_per_inference" in en and not _opt_num(en["joules_per_inference"]):
                errs.append(f"{where}.energy.joules_per_inference: expected a number or null")
    return errs


def check_report(d: Any) -> list[str]:
    """Problems with a report against the contract; empty when it conforms."""
    if not isinstance(d, dict):
        return ["report: expected a JSON object"]
    errs = _missing(d, "report", "report")
    if "schema_version" in d and d["schema_version"] != REPORT_SCHEMA_VERSION:
        errs.append(f"schema_version: {d['schema_version']!r}, expected {REPORT_SCHEMA_VERSION}")
    env = d.get("environment")
    if "environment" in d:
        if not isinstance(env, dict):
            errs.append("environment: expected an object")
        else:
            errs += _missing(env, "environment", "environment")
            if "runtimes" in env and not isinstance(env["runtimes"], dict):
                errs.append("environment.runtimes: expected an object {name: version}")
    models = d.get("models")
    keys: set[str] = set()
    if "models" in d:
        if not isinstance(models, list) or not models:
            errs.append("models: expected a non-empty list")
        else:
            for i, m in enumerate(models):
                errs += _check_model(m, f"models[{i}]")
                if isinstance(m, dict):
                    keys.add(f"{m.get('role')}/{m.get('variant')}")
            roles = {m.get("role") for m in models if isinstance(m, dict)}
            for role in ROLES:
                if role not in roles:
                    errs.append(f"models: no {role} entry")
    if "selected" in d:
        sel = d["selected"]
        if not isinstance(sel, str) or "/" not in sel:
            errs.append(f"selected: expected '<role>/<variant>', got {sel!r}")
        elif keys and sel not in keys:
            errs.append(f"selected: '{sel}' is not among models ({', '.join(sorted(keys))})")
    comp = d.get("comparison")
    if "comparison" in d:
        if not isinstance(comp, dict):
            errs.append("comparison: expected an object")
        else:
            errs += _missing(comp, "comparison", "comparison")
            for k in REQUIRED_KEYS["comparison"]:
                if k in comp and not _opt_num(comp[k]):
                    errs.append(f"comparison.{k}: expected a number or null, got {comp[k]!r}")
    if isinstance(comp, dict) and "kd_gain_points" in comp and not _opt_num(comp["kd_gain_points"]):
        errs.append(f"comparison.kd_gain_points: expected a number or null, got {comp['kd_gain_points']!r}")
    ctrl = (d.get("training") or {}).get("control") if isinstance(d.get("training"), dict) else None
    if ctrl is not None:
        if not isinstance(ctrl, dict):
            errs.append("training.control: expected an object or null")
        elif ctrl.get("accuracy") is not None and not (_num(ctrl["accuracy"]) and 0 <= ctrl["accuracy"] <= 1):
            errs.append(f"training.control.accuracy: expected a fraction in [0, 1] or null, got {ctrl['accuracy']!r}")
    cands = d.get("candidates")
    if cands is not None:
        if not isinstance(cands, list):
            errs.append("candidates: expected a list")
        else:
            for i, c in enumerate(cands):
                if not isinstance(c, dict):
                    errs.append(f"candidates[{i}]: not an object")
                    continue
                errs += _missing(c, "candidate", f"candidates[{i}]")
                st = c.get("status")
                if "status" in c and not (st in CANDIDATE_STATUSES or (isinstance(st, str) and st.startswith("failed"))):
                    errs.append(f"candidates[{i}].status: '{st}' is not one of {', '.join(CANDIDATE_STATUSES)}, failed: <reason>")
                if c.get("accuracy") is not None and not (_num(c["accuracy"]) and 0 <= c["accuracy"] <= 1):
                    errs.append(f"candidates[{i}].accuracy: expected a fraction in [0, 1] or null")
    return errs


def load_report(path: Path | str, strict: bool = True) -> dict:
    """Read a report.json; UserError (exit 2) for a missing file, bad JSON, another schema_version
    or (strict) a report that breaks the contract."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UserError(f"report not found: {path}", hint="run `edgekd build` first, or pass the path to a report.json")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); the file may be truncated",
                        hint="re-run `edgekd report` on the build directory to rewrite it") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text", hint="pass a report.json written by edgekd") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object at the top level", hint="pass a report.json written by edgekd")
    version = d.get("schema_version")
    if version != REPORT_SCHEMA_VERSION:
        raise UserError(f"{path}: report schema_version {version!r} is not supported (this edgekd reads {REPORT_SCHEMA_VERSION})",
                        hint="regenerate the report (and the baseline) with this edgekd version")
    if strict:
        problems = check_report(d)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{path}: not a valid report: {problems[0]}{more}",
                            hint="regenerate it with `edgekd report`; the contract is in ARCHITECTURE.md")
    return d


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Readers never see half a file, and the file survives a power loss (edgekd.fsio)."""
    from edgekd.fsio import write_bytes_atomic

    return write_bytes_atomic(path, data)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def dumps_report(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False) + "\n"
