"""ONNX -> ORT format (.ort) for ONNX Runtime Mobile, plus the reduced-operator config of the model.

`required_operators.config` lists the (domain, opset, op) triples the .ort needs; pass it to ORT's
`build.py --minimal_build --include_ops_by_config` to build a runtime that carries only those
kernels. The .ort is checked against its .onnx on this host before it ships.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import StageError, UserError

CONFIG_NAME = "required_operators.config"


def _external_files(onnx_path: Path) -> list[str]:
    """Relative locations of the external-data files an ONNX model references (e.g. model.onnx.data)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(onnx_path), load_external_data=False)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    return sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})


def parse_required_operators(text: str) -> dict[str, list[str]]:
    """`domain;opset;Op1,Op2` lines of a required-operators config -> {"domain;opset": [ops]}."""
    ops: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(";")
        if len(parts) < 3:
            continue
        # With --enable_type_reduction an op carries a JSON type list after '{': keep the op name only.
        names = [o.split("{")[0].strip() for o in parts[2].split(",") if o.strip()]
        ops.setdefault(f"{parts[0]};{parts[1]}", []).extend(n for n in names if n)
    return ops


def to_ort_format(onnx_path: Path | str, out_dir: Path | str, x_check: np.ndarray,
                  atol: float = 1e-4, rtol: float = 1e-3, target_platform: str = "arm",
                  name: str = "model") -> dict[str, Any]:
    """Convert `onnx_path` to `out_dir/<name>.ort` and `out_dir/required_operators.config`.

    Runs `python -m onnxruntime.tools.convert_onnx_models_to_ort` with the Fixed optimization
    style (graph optimizations baked in, what a CPU-only phone build wants) for `target_platform`
    (arm: no x86-only NCHWc layouts baked in). The .ort must load in onnxruntime and agree with
    the .onnx on `x_check` within atol/rtol, else StageError (exit 4).
    """
    from edgekd.export.onnx import check_parity
    from edgekd.runtimes.ort import run_onnx

    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    if not onnx_path.is_file():
        raise UserError(f"ONNX model not found: {onnx_path}", hint="export the model to ONNX first")
    if target_platform not in ("arm", "amd64"):
        raise UserError(f"unknown ORT target platform '{target_platform}'", hint="valid: arm, amd64")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".{name}.ort-work"
    if work.exists():  # left by a killed run of this function: ours to remove
        shutil.rmtree(work)
    (work / "in").mkdir(parents=True)
    try:
        shutil.copy2(onnx_path, work / "in" / f"{name}.onnx")
        for rel in _external_files(onnx_path):
            # The model refers to its data file by its original relative name: keep that name.
            src = onnx_path.parent / rel
            if not src.is_file():
                raise UserError(f"{onnx_path.name} references external data '{rel}', which is missing",
                                hint="keep the .onnx.data file next to the .onnx")
            dst = work / "in" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work / "in" / f"{name}.onnx"),
               "--output_dir", str(work / "out"), "--optimization_style", "Fixed", "--target_platform", target_platform]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        ort_src = work / "out" / f"{name}.ort"
        cfg_src = work / "out" / f"{name}.{CONFIG_NAME}"
        if proc.returncode != 0 or not ort_src.is_file():
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise StageError(f"ORT format conversion of {onnx_path.name} failed (exit {proc.returncode}): {tail[0][:200]}",
                             hint="run `python -m onnxruntime.tools.convert_onnx_models_to_ort` on the model to see the full log")
        if not cfg_src.is_file():
            raise StageError(f"ORT format conversion wrote no {name}.{CONFIG_NAME}",
                             hint="this onnxruntime version names the config differently; check its tools/ folder")
        ort_path = out_dir / f"{name}.ort"
        cfg_path = out_dir / CONFIG_NAME
        shutil.move(str(ort_src), ort_path)
        # The tool names the scratch path it converted in a comment: name the shipped file instead,
        # so the config (and its hash) does not depend on where the build ran.
        lines = [f"# - {ort_path.name}" if ln.startswith("# - ") else ln for ln in cfg_src.read_text().splitlines()]
        cfg_path.write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    try:
        got = run_onnx(ort_path, x_check)
    except Exception as e:  # onnxruntime raises its own exception types for unloadable models
        raise StageError(f"onnxruntime cannot run {ort_path.name}: {e}",
                         hint="the converted model does not load; check the onnxruntime version") from e
    parity = check_parity(run_onnx(onnx_path, x_check), got, atol, rtol, what=f"{ort_path.name} vs {onnx_path.name}")
    return {"format": "ort", "path": ort_path.name, "size_bytes": ort_path.stat().st_size,
            "required_operators_config": cfg_path.name,
            "required_operators": parse_required_operators(cfg_path.read_text()),
            "settings": {"optimization_style": "Fixed", "target_platform": target_platform,
                         "tool": "onnxruntime.tools.convert_onnx_models_to_ort"},
            "parity_vs_onnx": parity, "convert_seconds": round(seconds, 3)}


def time_ort(path: Path | str, example: np.ndarray, runs: int = 100, warmup: int = 10, threads: int = 1) -> dict[str, Any]:
    """Host latency of one onnxruntime run of an .onnx/.ort model (ms summary), labelled host."""
    from edgekd.runtimes.ort import session as ort_session
    from edgekd.profile.measure.stats import summarize

    if runs < 1:
        raise UserError(f"runs must be at least 1, got {runs}", hint="pass runs >= 1")
    sess = ort_session(path, threads)
    ex = np.asarray(example)
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(ex, dtype=np.int64 if np.issubdtype(ex.dtype, np.integer) else np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    samples = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        samples.append((time.perf_counter() - t) * 1e3)
    cpu_s = (time.process_time() - cpu0) / runs
    return {**summarize(samples), "host": True, "runtime": "onnxruntime", "threads": int(threads), "warmup": warmup,
            "cpu_seconds_per_inference": cpu_s}
