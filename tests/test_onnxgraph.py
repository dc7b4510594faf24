"""ONNX graph fixes shared by quantizers and the profiler."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgekd.onnxgraph import ensure_domain_imports, topological_sort


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


def test_topological_sort_orders_a_subgraph_after_the_outer_value_it_reads():
    # `If` reads `a` only inside its branches; it is listed before the Relu that makes `a`.
    then_g = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Abs", ["a"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
             helper.make_node("Identity", ["x"], ["x2"], name="independent"),
             helper.make_node("Relu", ["x"], ["a"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                       helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                           helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert topological_sort(m) is True
    names = [n.name for n in m.graph.node]
    assert names.index("relu") < names.index("if")
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(m.SerializeToString())
    y = sess.run(["y"], {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)})[0]
    np.testing.assert_array_equal(y, [-0.0, -2.0])


def test_topological_sort_refuses_a_cycle():
    from edgekd.errors import StageError

    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["c"], name="relu"),
             helper.make_node("Abs", ["c"], ["y"], name="abs")]
    g = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(StageError, match="cannot be ordered"):
        topological_sort(m)
    assert [n.name for n in m.graph.node] == ["add", "relu", "abs"]  # left as it was
