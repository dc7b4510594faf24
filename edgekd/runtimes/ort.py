"""onnxruntime: the one place edgekd makes inference sessions (threads, providers, logging,
optimisation level), runs a model over an array in batches, and reads a model's input spec.

Other modules ask here for sessions instead of building SessionOptions themselves, so a target
card's threads and providers mean the same thing in every stage. It imports nothing of edgekd but
errors, so every layer may use it (the zoo's ONNX teacher included): tests/test_layering.py keeps it
a leaf.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekd.errors import StageError, TargetUnavailable

Optimization = Literal["all", "extended", "basic", "disable"]


def session(model: Path | str | bytes, threads: int = 1, providers: list[str] | None = None, *,
            optimization: Optimization = "all", optimized_model_path: Path | str | None = None,
            sequential: bool = False, require_providers: bool = False):
    """An onnxruntime InferenceSession with `threads` intra-op threads (0: onnxruntime's default, one per
    physical core) and one inter-op thread.

    `model` is a path or serialized bytes. `require_providers` raises TargetUnavailable (exit 3) when
    onnxruntime here lacks a named provider instead of letting onnxruntime fall back silently."""
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    if require_providers:
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise TargetUnavailable(f"onnxruntime here lacks provider(s) {', '.join(missing)}",
                                    hint=f"available: {', '.join(ort.get_available_providers())}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if sequential:
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=providers)


def run_onnx(path: Path | str, x: np.ndarray, batch_size: int = 256, threads: int = 1,
             providers: list[str] | None = None) -> np.ndarray:
    """First output of an ONNX model over `x` in batches; a static batch dim is honoured by
    padding the last batch (with copies of its last row) and cutting the padding off the output."""
    sess = session(path, threads, providers)
    inp = sess.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    bs = static or batch_size
    outs = []
    for i in range(0, len(x), bs):
        b = x[i:i + bs]
        n = len(b)
        if static and n < bs:
            b = np.concatenate([b, np.repeat(b[-1:], bs - n, axis=0)])
        outs.append(sess.run(None, {inp.name: b})[0][:n])
    return np.concatenate(outs) if outs else np.empty((0,))


def top1_accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (a fraction) of a classifier's outputs [N, classes] against labels `y`: the one formula every
    classifier accuracy in edgekd uses, whatever runtime made the outputs. DataError for no or mismatched labels."""
    from edgekd.errors import DataError

    y = np.asarray(y).reshape(-1)
    if len(outputs) == 0 or len(outputs) != len(y):
        raise DataError(f"evaluation needs matching non-empty inputs and labels, got {len(outputs)} outputs, {len(y)} labels",
                        hint="check the validation/test split")
    return float(np.mean(np.asarray(outputs).reshape(len(y), -1).argmax(1) == y))


def accuracy(path: Path | str, x: np.ndarray, y: np.ndarray, **kw: Any) -> float:
    """Top-1 accuracy of an ONNX classifier on (x, y) through onnxruntime (the classifier task's evaluator)."""
    if len(x) == 0 or len(x) != len(y):
        return top1_accuracy(np.empty((len(x), 0)), y)  # the same DataError, before any session is made
    return top1_accuracy(run_onnx(path, x, **kw), y)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: list[int | None]  # None = dynamic/symbolic
    dtype: np.dtype


def input_spec(model_path: Path | str) -> InputSpec:
    """Name, dims and dtype of the model's first real (non-initializer) input."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise StageError(f"{Path(model_path).name}: the ONNX model has no inputs", hint="re-export the student")
    t = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    return InputSpec(inputs[0].name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)))
