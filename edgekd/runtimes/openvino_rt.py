"""OpenVINO on CPU: an independent runtime to cross-check an ONNX export against (onnxruntime and
OpenVINO share no kernels, so agreement between them says the graph, not one runtime, is right)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import StageError, TargetUnavailable


def _core():
    try:
        import openvino as ov
    except ImportError:
        raise TargetUnavailable("openvino is not importable", hint="pip install 'openvino>=2026.4,<2026.5'") from None
    return ov, ov.Core()


def run_openvino(onnx_path: Path | str, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """First output of the model on OpenVINO CPU, in FP32 (batch by batch for a static-batch model)."""
    ov, core = _core()
    # CPUs with AVX-512 BF16/AMX default to bf16 inference; pin f32 so parity means the same everywhere.
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)}
    try:
        model = core.read_model(str(onnx_path))
        compiled = core.compile_model(model, "CPU", config)
    except RuntimeError as e:  # OpenVINO reports unsupported ops / bad files as RuntimeError
        raise StageError(f"OpenVINO could not compile {Path(onnx_path).name}: {str(e).splitlines()[0]}",
                         hint="the graph uses an op or attribute OpenVINO's ONNX frontend does not support") from None
    inp = compiled.input(0)
    pshape = inp.get_partial_shape()
    static_batch = pshape.rank.is_static and pshape[0].is_static
    bs = pshape[0].get_length() if static_batch else max(len(x), 1)
    request = compiled.create_infer_request()
    out_port = compiled.output(0)
    outs = []
    for i in range(0, len(x), bs):
        chunk = np.ascontiguousarray(x[i:i + bs])
        request.infer({0: chunk})
        outs.append(np.array(request.get_tensor(out_port).data, copy=True))
    return np.concatenate(outs) if outs else np.empty((0,))


def openvino_parity(onnx_path: Path | str, x: np.ndarray, reference: np.ndarray, atol: float, rtol: float,
                    min_top1: float | None = None) -> dict[str, Any]:
    """Compare OpenVINO's output with `reference`: element-wise (|d| <= atol + rtol*|ref|), or, with
    `min_top1`, on the top-1 class (quantized graphs, whose integer kernels round differently between
    runtimes). Returns {ok, max_abs_diff, top1_agreement, atol, rtol, samples, runtime, version};
    the caller decides whether a mismatch fails the build."""
    ov, _ = _core()
    got = run_openvino(onnx_path, x)
    result: dict[str, Any] = {"runtime": "openvino", "version": ov.get_version(), "atol": atol, "rtol": rtol,
                              "samples": int(len(x))}
    if got.shape != reference.shape:
        result.update(ok=False, max_abs_diff=None, reason=f"shape {list(got.shape)} != reference {list(reference.shape)}")
        return result
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    result["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    result["top1_agreement"] = float((got.argmax(-1) == reference.argmax(-1)).mean()) if reference.ndim > 1 else None
    if min_top1 is not None:
        result["ok"] = result["top1_agreement"] is not None and result["top1_agreement"] >= min_top1
    else:
        result["ok"] = bool((diff <= atol + rtol * np.abs(reference.astype(np.float64))).all())
    return result
