"""Small ONNX graph fixes shared by the quantizers and the profiler (onnx only, no torch)."""
from __future__ import annotations

import heapq
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
    Returns True when the order changed. Nodes in a cycle or reading undefined values keep their
    relative order at the end, for the checker to report.
    """
    g = model.graph
    nodes = list(g.node)
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    producer_of = {o: i for i, n in enumerate(nodes) for o in n.output}
    # Values read from an outer scope by subgraphs count as dependencies of the node that owns them.
    deps: list[set[int]] = []
    for n in nodes:
        names = set(n.input) | _subgraph_reads(n)
        deps.append({producer_of[x] for x in names if x not in available and x in producer_of})
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    order: list[int] = []
    heapq.heapify(ready)  # smallest index first: keeps the original order where it is already valid
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    placed = set(order)
    order += [i for i in range(len(nodes)) if i not in placed]
    if order == list(range(len(nodes))):
        return False
    copies = [type(nodes[i])() for i in order]
    for c, i in zip(copies, order):
        c.CopyFrom(nodes[i])
    del g.node[:]
    g.node.extend(copies)
    return True


def _subgraph_reads(node: Any) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in sub.node:
                names |= set(n.input) | _subgraph_reads(n)
    return names
