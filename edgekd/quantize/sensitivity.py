"""THE keep-in-FP32 search, and rankings of the quantized nodes of a model by how much accuracy they cost.

`keep_fp32_search` is the one "keep nodes in FP32 until within budget" loop: INT8 classifier candidates
(single nodes, ranked by logit error below), language models (one node kind across layers,
`layer_groups`, ranked by the validation agreement each group recovers) and the Ascend FP16 preflight
(single FP16 operators) all run it with their own grouping, builder and validation evaluator.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.quantize.budget import Budget

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


# --------------------------------------------------------------------------- the keep-in-FP32 search

RANKING_SHOWN = 10  # ranking entries kept in the record (the report shows the top few)


@dataclass
class SearchResult:
    """What the keep-in-FP32 search did. Scores are the evaluator's (validation data)."""

    reference: float                 # the unquantized model's score
    initial_score: float             # the quantized model's score before anything was kept
    score: float                     # the score of the model left at `out`
    within_budget: bool
    kept_groups: list[str] = field(default_factory=list)
    kept_nodes: list[str] = field(default_factory=list)  # base nodes first, then each kept group's nodes
    steps: list[dict[str, Any]] = field(default_factory=list)    # {kept_fp32, nodes, accuracy} per step
    ranking: list[dict[str, Any]] = field(default_factory=list)  # {group, nodes, score}: first ranking, best first


def keep_fp32_search(groups: Mapping[str, Sequence[str]], build: Callable[[list[str], Path], None],
                     evaluate: Callable[[Path], float], out: Path, *, reference: float, initial: float,
                     budget: Budget, max_steps: int, base: Sequence[str] = (),
                     order: Sequence[str] | None = None,
                     rank_evaluate: Callable[[Path], float] | None = None,
                     log: Callable[[str], None] | None = None) -> SearchResult:
    """Keep groups of nodes in FP32, greedily, until `evaluate(out)` is within `budget` of `reference`.

    `groups`: group name -> the node names it keeps in FP32 (single nodes: {name: [name]}; one node kind
    across layers: `layer_groups`). `build(nodes, path)` writes the model with `nodes` kept in FP32 to
    `path`. `out` holds the model with only `base` kept, which scores `initial`; each step rewrites it.
    With `rank_evaluate` given, `evaluate` is called on `out` only, once per step, so a caller may keep
    its last full evaluation.

    Ranking: with `order` (group names, most sensitive first, from a ranking made elsewhere, e.g. the
    logit error on calibration samples) the groups are taken in that order. Without it, every step tries
    each remaining group on a scratch file next to `out` and keeps the one whose `rank_evaluate` score
    (default `evaluate`) recovers most; the first step's scores are the record's ranking.
    Stops when within budget, after `max_steps` groups, or when no group is left.
    Every score must come from validation data: this function makes a choice.
    """
    out = Path(out)
    base = list(base)
    rank_eval = rank_evaluate or evaluate
    res = SearchResult(reference=float(reference), initial_score=float(initial), score=float(initial),
                       within_budget=budget.within(reference, initial), kept_nodes=list(base))
    queue = [g for g in order if g in groups] if order is not None else None
    trial = out.with_name(f"{out.stem}.trial{out.suffix}")

    def nodes_of(kept: list[str]) -> list[str]:
        return base + [n for g in kept for n in groups[g]]

    try:
        while not res.within_budget and len(res.kept_groups) < max_steps:
            left = [g for g in (queue if queue is not None else groups) if g not in res.kept_groups]
            if not left:
                break
            if queue is not None:
                pick = left[0]
            else:
                scored = []
                for g in left:
                    build(nodes_of(res.kept_groups + [g]), trial)
                    scored.append((float(rank_eval(trial)), g))
                # best recovery first; ties go to the group named first, so the same scores give the same choice
                scored.sort(key=lambda sg: (budget.best_first(sg[0]), sg[1]))
                if not res.ranking:
                    res.ranking = [{"group": g, "nodes": len(groups[g]), "score": sc}
                                   for sc, g in scored[:RANKING_SHOWN]]
                pick = scored[0][1]
            res.kept_groups.append(pick)
            build(nodes_of(res.kept_groups), out)
            res.score = float(evaluate(out))
            res.within_budget = budget.within(reference, res.score)
            res.steps.append({"kept_fp32": pick, "nodes": len(groups[pick]), "accuracy": res.score})
            if log:
                log(f"  kept {pick} in FP32 -> {res.score:.2%} {budget.metric} (reference {reference:.2%})")
    finally:
        trial.unlink(missing_ok=True)
    res.kept_nodes = nodes_of(res.kept_groups)
    return res
