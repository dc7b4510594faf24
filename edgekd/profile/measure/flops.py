"""MACs/FLOPs/params of an ONNX graph at the profiled shape, and a roofline reading of a measured latency.

Counted ops: Conv, ConvInteger, QLinearConv, Gemm, MatMul, MatMulInteger, QLinearMatMul,
MatMulNBits (and com.microsoft QGemm / DynamicQuantizeMatMul / MatMulIntegerToFloat). A QDQ graph is
counted through the float Conv/MatMul/Gemm its DequantizeLinear nodes feed. FLOPs = 2 x MACs;
element-wise ops, pooling and softmax are not counted (they are memory-bound and small here).
`params` counts initializer elements, less quantization scales and zero points (MatMulNBits'
packed weights count as K x N, GatherBlockQuantized's as the table's elements), so it is close to, not equal to, the torch parameter count
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
    "GatherBlockQuantized": (2, 3),
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


def _onnx_shape_map(model: Any, name: str) -> dict[str, list[int] | None]:
    """onnx's own shape inference: the fallback for graphs onnxruntime's symbolic inference gives up on.
    It has no schema for contrib ops (MatMulNBits): what they feed stays unknown, hence `unresolved`."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise StageError(f"ONNX shape inference failed on {name}: {e}", hint="check the model with onnx.checker") from None
    return _shape_map(inferred)


def _fixed(dim: Any) -> bool:
    return dim.HasField("dim_value") and dim.dim_value > 0


def _fix_shapes(model: Any, input_shapes: dict[str, list[int]] | None, shape: list[int] | None) -> dict[str, list[int]]:
    """Pin symbolic input dims to the shape that was profiled; returns the input shapes counted at.

    `input_shapes` names inputs; `shape` (the profiled sample's shape, batch first) applies to every
    input of that rank, e.g. token ids and their attention mask. Pinning is onnxruntime's
    `make_input_shape_fixed`: a symbolic dim is fixed by name throughout the graph, so other inputs
    and outputs that share it (`sequence`) agree. A dim the model already fixes keeps its value.
    Dims still symbolic after that: the batch dim becomes 1 (`make_dim_param_fixed`), any other
    stays symbolic and the nodes that depend on it end up `unresolved`.
    """
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed, make_input_shape_fixed

    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    for name in input_shapes or {}:
        if name not in {i.name for i in graph_inputs}:
            raise UserError(f"input_shapes names '{name}', the model's inputs are "
                            f"{', '.join(i.name for i in graph_inputs)}", hint="use the ONNX input names")
    for inp in graph_inputs:
        dims = inp.type.tensor_type.shape.dim
        want = (input_shapes or {}).get(inp.name)
        if want is None and shape is not None and len(shape) == len(dims):
            want = shape
        if want is None:
            continue
        if len(want) != len(dims):
            raise UserError(f"input_shapes['{inp.name}'] has rank {len(want)}, the model's input has {len(dims)}",
                            hint="give one value per dimension, batch first")
        # The model's own fixed dims win (make_input_shape_fixed refuses to replace them).
        make_input_shape_fixed(model.graph, inp.name, [d.dim_value if _fixed(d) else int(v) for d, v in zip(dims, want)])
    for inp in graph_inputs:  # batch 1 for whatever the caller left open
        dims = inp.type.tensor_type.shape.dim
        if len(dims) > 0 and not _fixed(dims[0]):
            if dims[0].dim_param:
                make_dim_param_fixed(model.graph, dims[0].dim_param, 1)
            else:
                dims[0].dim_value = 1
    return {i.name: [d.dim_value if _fixed(d) else (d.dim_param or None) for d in i.type.tensor_type.shape.dim]
            for i in graph_inputs}


def _symbolic_shape_map(model: Any) -> dict[str, list[int] | None] | None:
    """onnxruntime's symbolic shape inference: it follows Shape->Gather->Reshape chains of transformer
    graphs that onnx's own inference leaves unknown, and knows the com.microsoft contrib ops (MatMulNBits
    included: what follows one is counted too, no stand-in op needed). None when it gives up (then onnx's inference alone decides, and what it cannot settle is `unresolved`)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # noqa: BLE001 — it raises bare Exception("Incomplete symbolic shape inference") and
        return None    # assorted errors on graphs it does not model; the onnx path below still counts them
    return _shape_map(inferred) if inferred is not None else None


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


def onnx_flops(path: Path | str, input_shapes: dict[str, list[int]] | None = None,
               shape: list[int] | None = None) -> dict:
    """{"macs", "flops", "params", "by_op", "unresolved", "complete", "input_shapes"} of an ONNX model.

    Counted at the shape that was profiled: `shape` (one sample, batch first) pins every input of
    its rank, `input_shapes` pins named inputs; other symbolic batch dims become 1. `unresolved`
    counts compute nodes whose shapes could not be settled (their MACs are missing from the total);
    `complete` is true only when there are none and something was counted: a figure derived from
    an incomplete count (an efficiency) must not be shown.
    """
    import onnx

    from edgekd.onnxgraph import ensure_domain_imports

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
    counted_at = _fix_shapes(model, input_shapes, shape)
    ensure_domain_imports(model)  # models from other tools may use contrib ops without declaring the domain
    shapes = _symbolic_shape_map(model)
    if shapes is None or any(_node_macs(n, shapes) is None for n in model.graph.node):
        fallback = _onnx_shape_map(model, path.name)
        shapes = fallback if shapes is None else {**fallback, **{k: v for k, v in shapes.items() if v is not None}}

    macs = 0
    by_op: dict[str, int] = {}
    unresolved = 0
    qparams: set[str] = set()
    nbits_weights: dict[str, int] = {}
    packed: dict[str, int] = {}
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
        if node.op_type == "GatherBlockQuantized" and node.input:
            packed[node.input[0]] = 8 // int(_attr(node, "bits", 4))  # 4-bit: two values a byte

    params = 0
    for init in model.graph.initializer:
        if init.name in qparams:
            continue
        params += nbits_weights.get(init.name, _prod(init.dims) * packed.get(init.name, 1))
    return {"macs": int(macs), "flops": int(2 * macs), "params": int(params), "by_op": by_op,
            "unresolved": unresolved, "complete": unresolved == 0 and macs > 0, "input_shapes": counted_at}


def roofline(flops: float | None, bytes_moved: float, latency_ms: float, device: DeviceConfig | None = None,
             *, peak_gflops: float | None = None, peak_method: str | None = None,
             mem_bandwidth_gbs: float | None = None) -> dict:
    """Where a measured latency sits against the compute and bandwidth roofs of the machine that ran it.

    The peak is `peak_gflops` when given (measured on the host at profile time: `peak_method` says
    how) else the target card's figure (`device`), which only describes an absent device. A None
    or zero `flops` (an incomplete count) gives no efficiency, intensity or bound rather than a 0.
    `bytes_moved` is the caller's estimate of DRAM traffic per inference (at least the weights).
    """
    if latency_ms <= 0 or not math.isfinite(latency_ms):
        raise StageError(f"roofline needs a positive latency, got {latency_ms} ms", hint="profile the model first")
    if (flops is not None and flops < 0) or bytes_moved < 0:
        raise StageError("roofline needs non-negative flops and bytes", hint="check the FLOP count")
    if peak_gflops is None:
        if device is None:
            raise StageError("roofline needs a peak: a measured one or a device card's", hint="this is a bug in edgekd")
        peak_gflops, peak_method = device.peak_gflops, peak_method or "target-card"
    bw = mem_bandwidth_gbs if mem_bandwidth_gbs is not None else (device.mem_bandwidth_gbs if device is not None else None)
    out: dict[str, Any] = {"peak_gflops": peak_gflops, "peak_method": peak_method, "mem_bandwidth_gbs": bw,
                           "achieved_gflops": None, "efficiency": None, "attainable_gflops": None,
                           "efficiency_vs_attainable": None, "arithmetic_intensity": None,
                           "ridge_point": peak_gflops / bw if bw else None, "bound": None}
    if not flops:
        out["note"] = "no complete FLOP count: no efficiency figure"
        return out
    achieved = flops / (latency_ms / 1e3) / 1e9
    intensity = flops / bytes_moved if bytes_moved > 0 else math.inf
    out.update(achieved_gflops=achieved, efficiency=achieved / peak_gflops,
               arithmetic_intensity=intensity if math.isfinite(intensity) else None)
    if bw:
        attainable = min(peak_gflops, intensity * bw)
        out.update(attainable_gflops=attainable,
                   efficiency_vs_attainable=achieved / attainable if attainable > 0 else None,
                   bound="memory" if intensity < peak_gflops / bw else "compute")
    return out


def count_for_roofline(count: dict) -> float | None:
    """The FLOPs a roofline may use: None unless the count is complete."""
    return float(count["flops"]) if count.get("complete") else None


def host_roofline(path: Path | str, latency_ms: float, host_peak: dict | None, *,
                  shape: list[int] | None = None, input_shapes: dict[str, list[int]] | None = None,
                  mem_bandwidth_gbs: float | None = None) -> tuple[dict, dict | None]:
    """FLOP count of `path` at the profiled shape, and the roofline of a latency measured on this
    host against this host's measured peak (`host_peak` from runner.measure_host_peak).

    Counting problems are not fatal (latency/memory/energy already measured stand): the count then
    carries `error` and the roofline no efficiency. Without a measured peak there is no roofline
    (None): a card's peak describes another machine. `mem_bandwidth_gbs` (the card's, when it
    describes this host class) adds the memory roof; without it there is no `bound`.
    """
    import os

    try:
        count = onnx_flops(path, input_shapes, shape)
    except StageError as e:
        count = {"error": e.message, "complete": False}
    peak = (host_peak or {}).get("peak_gflops")
    if not peak:
        return count, None
    rf = roofline(count_for_roofline(count), os.path.getsize(path), latency_ms, peak_gflops=float(peak),
                  peak_method=str(host_peak.get("method", "sgemm-calibration")), mem_bandwidth_gbs=mem_bandwidth_gbs)
    if mem_bandwidth_gbs:
        rf["mem_bandwidth_source"] = "target-card"
    return count, rf
