"""MACs/FLOPs/params of an ONNX graph at batch 1, and a roofline reading of a measured latency.

Counted ops: Conv, ConvInteger, QLinearConv, Gemm, MatMul, MatMulInteger, QLinearMatMul,
MatMulNBits (and com.microsoft QGemm / DynamicQuantizeMatMul / MatMulIntegerToFloat). A QDQ graph is
counted through the float Conv/MatMul/Gemm its DequantizeLinear nodes feed. FLOPs = 2 x MACs;
element-wise ops, pooling and softmax are not counted (they are memory-bound and small here).
`params` counts initializer elements, less quantization scales and zero points (MatMulNBits'
packed weights count as K x N), so it is close to, not equal to, the torch parameter count
(BatchNorm folded away, shape constants included).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgekd.config import DeviceConfig
from edgekd.errors import StageError, UserError

# Inputs that are quantization scales / zero points, per op: not parameters of the model.
_QPARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "ConvInteger": (2, 3),
    "MatMulInteger": (2, 3),
    "MatMulNBits": (2, 3),
    "DynamicQuantizeMatMul": (2, 3),
    "MatMulIntegerToFloat": (2, 3, 4, 5),
    "QGemm": (1, 2, 4, 5, 7, 8),
}


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _shape_map(model: Any) -> dict[str, list[int] | None]:
    """Value name -> static shape (None when any dim is unknown)."""
    shapes: dict[str, list[int] | None] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims = None
                break
        shapes[vi.name] = dims
    for init in g.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


def _infer_shape_map(model: Any, name: str) -> dict[str, list[int] | None]:
    """Shape inference, seeing through contrib ops onnx has no schema for.

    onnx cannot infer the output of com.microsoft MatMulNBits (INT4 weight-only), so everything
    downstream of the first one would stay unknown. For inference only, each is stood in by a
    MatMul against a weightless [K, N] graph input of the activation's type; the model is restored
    before returning.
    """
    import onnx

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    originals: list[tuple[int, Any]] = []
    extra_inputs = []
    for idx, node in enumerate(g.node):
        if node.op_type != "MatMulNBits" or len(node.input) < 3:
            continue
        k, n = _attr(node, "K"), _attr(node, "N")
        scales = inits.get(node.input[2])
        if k is None or n is None or scales is None:
            continue
        w = f"__edgekd_nbits_w{idx}"
        extra_inputs.append(onnx.helper.make_tensor_value_info(w, scales.data_type, [int(k), int(n)]))
        stand_in = onnx.helper.make_node("MatMul", [node.input[0], w], list(node.output), name=node.name)
        originals.append((idx, onnx.NodeProto.FromString(node.SerializeToString())))
        node.CopyFrom(stand_in)
    g.input.extend(extra_inputs)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise StageError(f"ONNX shape inference failed on {name}: {e}", hint="check the model with onnx.checker") from None
    finally:
        for idx, orig in originals:
            g.node[idx].CopyFrom(orig)
        for _ in extra_inputs:
            g.input.pop()
    return _shape_map(inferred)


def _fix_batch(model: Any, input_shapes: dict[str, list[int]] | None) -> None:
    """Pin symbolic input dims: the batch (first) dim to 1, or the shapes the caller gives."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if input_shapes and inp.name in input_shapes:
            want = input_shapes[inp.name]
            if len(want) != len(dims):
                raise UserError(f"input_shapes['{inp.name}'] has rank {len(want)}, the model's input has {len(dims)}",
                                hint="give one value per dimension, batch first")
            for d, v in zip(dims, want):
                d.ClearField("dim_param")
                d.dim_value = int(v)
        elif len(dims) > 0 and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(node: Any, shapes: dict[str, list[int] | None]) -> int | None:
    """MACs of one node, or None when a needed shape is unknown; 0 for ops not counted."""
    op = node.op_type

    def sh(i: int) -> list[int] | None:
        return shapes.get(node.input[i]) if len(node.input) > i and node.input[i] else None

    out = shapes.get(node.output[0]) if node.output else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = sh(3 if op == "QLinearConv" else 1)
        if w is None or out is None:
            return None
        # out [N, Cout, *spatial]; w [Cout, Cin/group, *kernel]: each output element is one dot product.
        return _prod(out) * _prod(w[1:])
    if op in ("Gemm", "QGemm"):  # QGemm (com.microsoft): A, a_scale, a_zp, B, ...
        a, b = sh(0), sh(3 if op == "QGemm" else 1)
        if a is None or b is None:
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return m * n * k
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        a = sh(0)
        b = sh(3 if op == "QLinearMatMul" else 1)
        if a is None or b is None:
            return None
        k = a[-1]
        # Broadcast batch dims of A and B; 1-D operands are promoted as numpy.matmul does.
        a2 = a if len(a) > 1 else [1, a[0]]
        b2 = b if len(b) > 1 else [b[0], 1]
        batch = [max(x, y) for x, y in zip(_pad(a2[:-2], b2[:-2]), _pad(b2[:-2], a2[:-2]))]
        return _prod(batch) * a2[-2] * b2[-1] * k
    if op == "MatMulNBits":
        a = sh(0)
        n, k = _attr(node, "N"), _attr(node, "K")
        if a is None or n is None or k is None:
            return None
        return _prod(a[:-1]) * int(k) * int(n)
    return 0


def _pad(xs: list[int], other: list[int]) -> list[int]:
    return [1] * max(0, len(other) - len(xs)) + list(xs)


def onnx_flops(path: Path | str, input_shapes: dict[str, list[int]] | None = None) -> dict:
    """{"macs", "flops", "params", "by_op", "unresolved"} of an ONNX model at batch 1.

    `unresolved` counts compute nodes whose shapes shape inference could not settle (their MACs are
    missing from the total); pass `input_shapes` to pin non-batch symbolic dims (sequence length).
    """
    import onnx

    from edgekd.export.graph import ensure_domain_imports

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}", hint="export the model first")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError/OSError variants for corrupt files
        raise UserError(f"cannot read ONNX model {path.name}: {e}", hint="re-export the model") from None
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    _fix_batch(model, input_shapes)
    ensure_domain_imports(model)  # models from other tools may use contrib ops without declaring the domain
    shapes = _infer_shape_map(model, path.name)

    macs = 0
    by_op: dict[str, int] = {}
    unresolved = 0
    qparams: set[str] = set()
    nbits_weights: dict[str, int] = {}
    for node in model.graph.node:
        m = _node_macs(node, shapes)
        if m is None:
            unresolved += 1
        elif m:
            macs += m
            by_op[node.op_type] = by_op.get(node.op_type, 0) + m
        for i in _QPARAM_INPUTS.get(node.op_type, ()):
            if len(node.input) > i and node.input[i]:
                qparams.add(node.input[i])
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            # B is packed (several weights per byte): count the K x N weights it encodes.
            nbits_weights[node.input[1]] = int(_attr(node, "K", 0)) * int(_attr(node, "N", 0))

    params = 0
    for init in model.graph.initializer:
        if init.name in qparams:
            continue
        params += nbits_weights.get(init.name, _prod(init.dims))
    return {"macs": int(macs), "flops": int(2 * macs), "params": int(params), "by_op": by_op,
            "unresolved": unresolved}


def roofline(flops: float, bytes_moved: float, latency_ms: float, device: DeviceConfig) -> dict:
    """Where a measured latency sits against the device's compute and bandwidth roofs.

    `bytes_moved` is the caller's estimate of DRAM traffic per inference (at least the weights).
    `bound` says which roof limits a kernel of this arithmetic intensity on this device.
    """
    if latency_ms <= 0 or not math.isfinite(latency_ms):
        raise StageError(f"roofline needs a positive latency, got {latency_ms} ms", hint="profile the model first")
    if flops < 0 or bytes_moved < 0:
        raise StageError("roofline needs non-negative flops and bytes", hint="check the FLOP count")
    seconds = latency_ms / 1e3
    achieved = flops / seconds / 1e9
    intensity = flops / bytes_moved if bytes_moved > 0 else math.inf
    ridge = device.peak_gflops / device.mem_bandwidth_gbs  # FLOP/byte where the roofs meet
    attainable = min(device.peak_gflops, intensity * device.mem_bandwidth_gbs)
    return {
        "achieved_gflops": achieved,
        "peak_gflops": device.peak_gflops,
        "efficiency": achieved / device.peak_gflops,
        "attainable_gflops": attainable,
        "efficiency_vs_attainable": achieved / attainable if attainable > 0 else None,
        "arithmetic_intensity": intensity if math.isfinite(intensity) else None,
        "ridge_point": ridge,
        "bound": "memory" if intensity < ridge else "compute",
    }
