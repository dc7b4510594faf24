"""ExecuTorch export (.pte, XNNPACK-delegated, FP32 or pt2e INT8) and host execution/timing.

The .pte files target phones, but the pip wheel of ExecuTorch carries an x86 runtime with the
XNNPACK backend, so every artifact is run and checked on the build host before it ships.
Host latency is a proxy for relative cost only; it is always labelled `"host": true`.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from edgekd.errors import StageError, TargetUnavailable, UserError

_HINT_INSTALL = "pip install '.[mobile]' (installs executorch>=1.5.1,<1.6)"



def write_program(program, out_path: Path) -> None:
    """An ExecuTorch program written under its final name only once complete (temp file, then rename)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as f:
        program.write_to_file(f)
    os.replace(tmp, out_path)

def require_executorch() -> None:
    """Raise TargetUnavailable (exit 3) when the executorch package is not importable."""
    if importlib.util.find_spec("executorch") is None:
        raise TargetUnavailable("executorch is not installed: cannot build or run .pte files", hint=_HINT_INSTALL)


def _ops_in(message: str) -> list[str]:
    """ATen op names mentioned in an exporter/lowering error, so the user knows which layer to change."""
    found = re.findall(r"aten[.:]{1,2}[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)?", message)
    return sorted(set(found))


def _stage_failure(step: str, e: Exception) -> StageError:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    ops = _ops_in(text)
    where = f" at op {', '.join(ops[:3])}" if ops else ""
    return StageError(f"ExecuTorch {step} failed{where}: {type(e).__name__}: {first[:200]}",
                      hint="replace the unsupported layer in the student, or build the 'ort' format only; --debug shows the traceback")


def _delegation(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Delegated vs portable-kernel node counts of a lowered program (getitem plumbing excluded)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    delegated = non_delegated = 0
    portable_ops: list[str] = []
    for op_type, b in info.delegation_by_operator.items():
        if op_type == "getitem":  # tuple unpacking of the delegate's outputs, not compute
            continue
        delegated += b.delegated
        non_delegated += b.non_delegated
        if b.non_delegated:
            portable_ops.append(op_type)
    total = delegated + non_delegated
    return {"delegated_subgraphs": int(info.num_delegated_subgraphs), "delegated_nodes": delegated,
            "non_delegated_nodes": non_delegated,
            "delegated_fraction": (delegated / total) if total else None,
            "non_delegated_ops": sorted(portable_ops)}


def _quantize_int8(model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray) -> torch.nn.Module:
    """pt2e static INT8 with the XNNPACK quantizer: symmetric, per-channel weights, calibrated activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        captured = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(captured, quantizer)
    except Exception as e:  # torch.export / pt2e raise many unrelated types; all mean "cannot quantize this graph"
        raise _stage_failure("int8 quantization (prepare_pt2e)", e) from e
    batch = int(example.shape[0])
    xs = torch.as_tensor(np.ascontiguousarray(calib, dtype=_np_dtype(example)))
    with torch.no_grad():
        # The captured graph is specialised to the example's batch size: calibrate in chunks of it.
        for i in range(0, len(xs) - batch + 1, batch):
            prepared(xs[i:i + batch])
    return convert_pt2e(prepared)


def export_pte(model: torch.nn.Module, example: torch.Tensor, out_path: Path,
               quantize: Literal["fp32", "int8"] = "fp32", calib: np.ndarray | None = None) -> dict[str, Any]:
    """Export `model` at `example`'s (static) shape to an XNNPACK-delegated ExecuTorch program.

    int8 needs `calib` (samples shaped like `example` without its batch dim, or with it): pt2e
    quantization with the XNNPACK quantizer is calibrated on them before lowering.
    The file is written atomically; returns size, delegation counts and the settings used.
    """
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if quantize not in ("fp32", "int8"):
        raise UserError(f"unknown .pte precision '{quantize}'", hint="valid: fp32, int8")
    out_path = Path(out_path)
    model = model.eval()
    # Token ids stay int64 (an Embedding's index input); everything else is a float32 tensor.
    example = example.detach().contiguous() if not torch.is_floating_point(example) else \
        example.detach().to(torch.float32).contiguous()
    n_calib = 0
    if quantize == "int8":
        if calib is None or len(calib) < int(example.shape[0]):
            raise UserError("int8 .pte export needs calibration samples",
                            hint="pass calib: an array of training inputs (quantize.calibration_samples of them)")
        calib = np.asarray(calib, dtype=_np_dtype(example))
        if calib.shape[1:] != tuple(example.shape[1:]):
            raise UserError(f"calibration samples have shape {calib.shape[1:]}, the model input is {tuple(example.shape[1:])}",
                            hint="calibrate on inputs from the same dataset the model takes")
        n_calib = len(calib) - len(calib) % int(example.shape[0])
        model = _quantize_int8(model, example, calib)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            exported = torch.export.export(model, (example,))
    except Exception as e:  # see _quantize_int8: re-raised as a typed stage failure naming the op
        raise _stage_failure("torch.export", e) from e
    try:
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        delegation = _delegation(lowered.exported_program().graph_module)
        program = lowered.to_executorch()
    except Exception as e:  # lowering errors name the unsupported edge op in their message
        raise _stage_failure("lowering (to_edge_transform_and_lower/to_executorch)", e) from e
    write_program(program, out_path)
    from importlib.metadata import version

    return {"format": "pte", "precision": quantize, "path": out_path.name, "size_bytes": out_path.stat().st_size,
            "backend": "XnnpackBackend", "input_shape": list(example.shape), **delegation,
            "settings": {"partitioner": "XnnpackPartitioner",
                         "quantizer": ("XNNPACKQuantizer symmetric, per-channel weights, static activations (pt2e)"
                                       if quantize == "int8" else None),
                         "calibration_samples": n_calib if quantize == "int8" else None,
                         "executorch_version": version("executorch")},
            "export_seconds": round(time.perf_counter() - t0, 3)}


def _load_forward(path: Path | str):
    require_executorch()
    from executorch.runtime import Runtime

    path = Path(path)
    if not path.is_file():
        raise UserError(f".pte file not found: {path}", hint="export it first with export_pte")
    try:
        program = Runtime.get().load_program(path)
        return program.load_method("forward")
    except Exception as e:  # the pybind loader raises RuntimeError/ValueError variants for bad programs
        raise StageError(f"ExecuTorch could not load {path.name}: {e}",
                         hint="re-export the .pte with the installed executorch version") from e


def _np_dtype(t: torch.Tensor) -> type:
    return np.float32 if torch.is_floating_point(t) else np.int64


def _input_shape(method) -> tuple[int, ...]:
    return tuple(int(d) for d in method.metadata.input_tensor_meta(0).sizes())


def run_pte(path: Path | str, x: np.ndarray) -> np.ndarray:
    """First output of a .pte's `forward` over `x`, in chunks of the program's static batch size."""
    method = _load_forward(path)
    shape = _input_shape(method)
    x = np.ascontiguousarray(x, dtype=np.int64 if np.issubdtype(np.asarray(x).dtype, np.integer) else np.float32)
    if tuple(x.shape[1:]) != shape[1:]:
        raise UserError(f"input shape {tuple(x.shape[1:])} does not match the .pte's {shape[1:]}",
                        hint="a .pte has a static input shape; pass samples shaped like the export example")
    b = shape[0]
    n = len(x)
    pad = (-n) % b  # the last chunk is padded to the static batch, its padding rows dropped
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])
    outs = []
    for i in range(0, len(x), b):
        try:
            res = method.execute([torch.from_numpy(x[i:i + b])])
        except Exception as e:  # execution errors surface as RuntimeError from the pybind layer
            raise StageError(f"ExecuTorch execution of {Path(path).name} failed: {e}",
                             hint="check the input shape and dtype against the export example") from e
        outs.append(res[0].detach().numpy().copy())
    return np.concatenate(outs)[:n]


def time_pte(path: Path | str, example: np.ndarray | torch.Tensor, runs: int = 100, warmup: int = 10,
             threads: int = 1) -> dict[str, Any]:
    """Host latency of one `forward` call (ms summary), labelled host: these are not device figures."""
    from edgekd.profile.measure.stats import summarize

    if runs < 1:
        raise UserError(f"runs must be at least 1, got {runs}", hint="pass runs >= 1")
    import gc

    import executorch.extension.pybindings.portable_lib as _pl

    ex = np.asarray(example)
    x = torch.as_tensor(np.ascontiguousarray(ex, dtype=np.int64 if np.issubdtype(ex.dtype, np.integer) else np.float32))
    before = int(_pl._threadpool_get_thread_count())
    # XNNPACK runs on ExecuTorch's own threadpool (all cores by default): pin it like the card asks.
    # The XNNPACK delegate keeps a pointer to the pool it was initialised with, so the pool is reset
    # BEFORE the method is loaded and restored only AFTER the method is released: resetting it under
    # a live method left a dangling pool and crashed the process (SIGSEGV) now and then.
    if before != int(threads):
        _pl._unsafe_reset_threadpool(int(threads))
    method = None
    try:
        method = _load_forward(path)
        for _ in range(warmup):
            method.execute([x])
        samples = []
        cpu0 = time.process_time()  # CPU seconds of every thread of this process: the energy estimate's input
        for _ in range(runs):
            t = time.perf_counter()
            method.execute([x])
            samples.append((time.perf_counter() - t) * 1e3)
        cpu_s = (time.process_time() - cpu0) / runs
    finally:
        del method
        gc.collect()
        if before != int(threads):
            _pl._unsafe_reset_threadpool(before)
    return {**summarize(samples), "host": True, "runtime": "executorch", "threads": int(threads), "warmup": warmup,
            "cpu_seconds_per_inference": cpu_s}
