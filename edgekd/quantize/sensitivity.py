"""Rank the quantized nodes of a model by how much accuracy they cost, so the accuracy-aware
loop can keep the worst offenders in FP32.

Two rankings, both measured against the FP32 model's logits on real calibration samples:

* ``exclusion`` (default, honest but costs one quantization per node): re-quantize with exactly
  one node left in FP32 and score the node by how much the output error falls.
* ``layer-error`` (one pass, for graphs with many nodes): expose every quantized node's output in
  both models and score each node by the error it *adds* (its output error minus the worst error
  already present on its inputs), because raw per-tensor error only grows with depth and would
  blame the last layers for everything upstream.

onnx/onnxruntime are imported inside the functions (house rule: heavy SDKs stay out of import time).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Q_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops that carry quantized arithmetic themselves (QOperator / dynamic / weight-only formats).
INTEGER_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulNBits", "QGemm",
    "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM", "GatherBlockQuantized", "QLinearAdd",
    "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid",
})
# Ops with weights: preferred when a graph has more quantized nodes than we can afford to rank.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU"})


@dataclass(frozen=True)
class NodeScore:
    node: str
    op_type: str
    score: float  # higher = more sensitive (keeping it in FP32 helps more)


def quantized_nodes(model) -> list[tuple[str, str]]:
    """(name, op_type) of compute nodes that run on quantized values, in graph order.

    In QDQ graphs a node is quantized when one of its inputs comes out of a DequantizeLinear;
    in QOperator/dynamic/weight-only graphs the integer op itself is the quantized node.
    """
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    out: list[tuple[str, str]] = []
    for n in model.graph.node:
        if n.op_type in Q_OPS:
            continue
        if n.op_type in INTEGER_OPS or any(i in dq_out for i in n.input):
            out.append((n.name, n.op_type))
    return out


# ORT's dynamic quantizer renames the node it replaces: "/0/Gemm" -> "/0/Gemm_MatMul_quant".
_RENAME_SUFFIXES = ("_MatMul_quant", "_quant")


def source_node_name(name: str, op_type: str) -> str:
    """The node name to pass to `nodes_to_exclude` for a quantized node (undo ORT's renaming)."""
    if op_type in INTEGER_OPS:
        for suffix in _RENAME_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
    return name


def relative_error(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean squared error normalised by the reference's power (scale-free, 0 = identical)."""
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    power = float(np.mean(ref * ref))
    return float(np.mean((out - ref) ** 2) / max(power, 1e-12))


def rank_by_exclusion(nodes: Sequence[tuple[str, str]], reference: np.ndarray,
                      run_excluding: Callable[[list[str]], np.ndarray]) -> list[NodeScore]:
    """Score each node by the drop in logit error when only that node stays in FP32.

    `run_excluding(names)` quantizes with `names` excluded and returns the logits on the same
    samples as `reference` (the FP32 logits).
    """
    base = relative_error(reference, run_excluding([]))
    scores = [NodeScore(name, op, base - relative_error(reference, run_excluding([name])))
              for name, op in nodes]
    return sorted(scores, key=lambda s: -s.score)


def _run_with_outputs(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    import onnx
    from edgekd.runtimes.ort import session

    model = onnx.load(str(path))
    present = {o for n in model.graph.node for o in n.output}
    have = {o.name for o in model.graph.output}
    for name in names:
        if name in present and name not in have:
            # Type left empty: ORT infers it; we only need the values back.
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    # Optimisations could fuse away the intermediate tensors we ask for.
    sess = session(model.SerializeToString(), optimization="disable")
    outs = [o.name for o in sess.get_outputs()]
    vals = sess.run(outs, {sess.get_inputs()[0].name: x})
    return dict(zip(outs, vals))


def rank_by_layer_error(fp32_path: Path, quant_path: Path, x: np.ndarray) -> list[NodeScore]:
    """Score each quantized node by the output error it adds over its inputs' error (one pass)."""
    import onnx

    qmodel = onnx.load(str(quant_path))
    producer = {o: n for n in qmodel.graph.node for o in n.output}

    def source_tensor(name: str) -> str:
        # Walk back through DequantizeLinear/QuantizeLinear to the float tensor they wrap.
        while name in producer and producer[name].op_type in ("DequantizeLinear", "QuantizeLinear"):
            name = producer[name].input[0]
        return name

    nodes = [n for n in qmodel.graph.node if (n.name, n.op_type) in set(quantized_nodes(qmodel))]
    wanted: set[str] = set()
    for n in nodes:
        wanted.update(n.output[:1])
        wanted.update(source_tensor(i) for i in n.input if i)
    names = sorted(wanted)
    ref = _run_with_outputs(fp32_path, names, x)
    got = _run_with_outputs(quant_path, names, x)

    def err(t: str) -> float:
        if t in ref and t in got and ref[t].shape == got[t].shape and np.issubdtype(ref[t].dtype, np.floating):
            return relative_error(ref[t], got[t])
        return 0.0  # weights/initializers and graph inputs: no activation error upstream

    scores = []
    for n in nodes:
        upstream = max((err(source_tensor(i)) for i in n.input if i), default=0.0)
        scores.append(NodeScore(n.name, n.op_type, err(n.output[0]) - upstream))
    return sorted(scores, key=lambda s: -s.score)


def group_name(node: str) -> str:
    """A node's name with its layer index taken out: `/model/layers.3/mlp/down_proj/MatMul` ->
    `/model/layers.*/mlp/down_proj/MatMul`, the same for that node in every layer."""
    return re.sub(r"layers\.\d+", "layers.*", node)


def layer_groups(model) -> dict[str, list[str]]:
    """The quantized nodes of a transformer graph grouped across its layers: the node name with the layer index
    taken out (`/model/layers.*/mlp/down_proj/MatMul`) -> the source names of that node in every layer, as
    `nodes_to_exclude` takes them. One decision per projection instead of one per node: a 12-layer LM has ~110
    quantized MatMuls but ~11 kinds of them, and the sensitive kind (the MLP's down projection, whose input
    carries the activation outliers) is sensitive in every layer."""
    groups: dict[str, list[str]] = {}
    for name, op in quantized_nodes(model):
        if op not in INTEGER_OPS and op not in WEIGHTED_OPS:  # e.g. a Shape reading a dequantized embedding
            continue
        src = source_node_name(name, op)
        members = groups.setdefault(group_name(src), [])
        if src not in members:
            members.append(src)
    return groups
