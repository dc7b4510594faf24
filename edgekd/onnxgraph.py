"""Small ONNX graph fixes shared by the converters, the quantizers and the FLOP counter.

onnx/onnx_ir only (imported inside the functions), no torch and no edgekd module but errors: it sits
in the bottom layer with fsio and config so that `profile.measure` (below export) can use it too."""
from __future__ import annotations

from typing import Any

# Contrib domains ONNX Runtime implements, with the opset version it registers them at.
_KNOWN_DOMAIN_VERSIONS = {"com.microsoft": 1, "com.microsoft.nchwc": 1, "com.ms.internal.nhwc": 1,
                          "ai.onnx.ml": 3, "ai.onnx.training": 1, "ai.onnx.preview.training": 1}


def ensure_domain_imports(model: Any) -> list[str]:
    """Add an opset_import for every node domain the model uses but does not declare.

    NNCF's `compress_weights` writes com.microsoft MatMulNBits nodes without declaring the domain;
    onnxruntime tolerates that, but onnx's checker and shape inference reject the model. Returns the
    domains added.
    """
    import onnx

    declared = {imp.domain for imp in model.opset_import}
    used = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    added = sorted(used - declared)
    for domain in added:
        model.opset_import.append(onnx.helper.make_opsetid(domain, _KNOWN_DOMAIN_VERSIONS.get(domain, 1)))
    return added


def topological_sort(model: Any) -> bool:
    """Reorder the main graph's nodes so each comes after the producers of its inputs (ONNX requires it).

    onnxruntime's float16 converter appends the input Casts at the end of the node list; ORT runs
    such a graph but onnx's checker rejects it and other tools (ATC, ExecuTorch importers) may too.
    The order is onnx_ir's stable sort (`Graph.sort()`: nodes already in a valid order keep it; a
    node owning subgraphs comes after the producers of the outer values they read). Only the order
    of the NodeProtos changes: the model is not round-tripped through onnx_ir, so nothing else in
    it (value_info, metadata, initializers) is touched. Returns True when the order changed.
    """
    import onnx_ir as ir

    from edgekd.errors import StageError

    g = model.graph
    ir_graph = ir.serde.deserialize_graph(g)
    index = {id(node): i for i, node in enumerate(ir_graph)}  # IR nodes come in the proto's order
    try:
        ir_graph.sort()
    except ValueError as e:  # onnx_ir: "Graph contains a cycle"
        raise StageError(f"ONNX graph '{g.name}' cannot be ordered: {e}",
                         hint="the graph edit that produced it is wrong; check it with onnx.checker") from None
    order = [index[id(node)] for node in ir_graph]
    if order == list(range(len(order))):
        return False
    nodes = list(g.node)
    copies = [type(nodes[i])() for i in order]
    for c, i in zip(copies, order):
        c.CopyFrom(nodes[i])
    del g.node[:]
    g.node.extend(copies)
    return True
