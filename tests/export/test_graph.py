"""ONNX graph fixes shared by quantizers and the profiler."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgekd.export.graph import ensure_domain_imports, topological_sort


def _chain(order: list[int]):
    # x -> Relu -> Neg -> Abs -> y, nodes listed in `order`
    specs = [("Relu", "x", "a"), ("Neg", "a", "b"), ("Abs", "b", "y")]
    nodes = [helper.make_node(op, [i], [o], name=op) for op, i, o in (specs[k] for k in order)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_topological_sort_fixes_order_and_keeps_a_valid_one():
    m = _chain([2, 0, 1])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(m)
    assert topological_sort(m) is True
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Relu", "Neg", "Abs"]
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
    np.testing.assert_array_equal(y, [0.0, 2.0])
    assert topological_sort(m) is False  # already sorted: untouched


def test_ensure_domain_imports_adds_only_missing_domains():
    node = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.microsoft")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert ensure_domain_imports(m) == ["com.microsoft"]
    assert {(i.domain, i.version) for i in m.opset_import} == {("", 17), ("com.microsoft", 1)}
    assert ensure_domain_imports(m) == []
