"""edgekd.quantize.nbits: NNCF's per-channel INT8 DequantizeLinear weights lowered onto onnxruntime's MatMulNBits /
GatherBlockQuantized. At accuracy_level 0 the lowered graph computes the same values as the one it replaces (the
rewrite changes no weight); at 4 it is close; what does not match is left alone. Seconds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.quantize.nbits import block_size, lower
from edgekd.runtimes.ort import session


def _per_channel(w: np.ndarray, axis: int, signed: bool):
    """(q, scale, zero point) of `w` quantized per slice along `axis`: asymmetric uint8 or symmetric int8."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    lo, hi = w.min(axis=red), w.max(axis=red)
    if signed:
        s = np.maximum(np.abs(lo), np.abs(hi)) / 127.0
        q = np.clip(np.round(w / np.expand_dims(s, red)), -127, 127).astype(np.int8)
        return q, s.astype(np.float32), np.zeros_like(s, dtype=np.int8)
    s = (hi - lo) / 255.0
    zp = np.clip(np.round(-lo / s), 0, 255)
    q = np.clip(np.round(w / np.expand_dims(s, red)) + np.expand_dims(zp, red), 0, 255).astype(np.uint8)
    return q, s.astype(np.float32), zp.astype(np.uint8)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, feed: dict) -> np.ndarray:
    return session(m.SerializeToString()).run(None, feed)[0]


def _dequantized(m: onnx.ModelProto, axis: int) -> np.ndarray:
    """The weight the graph's DequantizeLinear stands for, computed here (onnxruntime may fuse that DequantizeLinear
    into an integer kernel, so the graph's own output is not the reference)."""
    t = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    shape = [1, 1]
    shape[axis] = -1
    s, zp = t["s"].reshape(shape), t["zp"].reshape(shape)
    return (t["q"] - zp) * s


def _ops(m) -> list[str]:
    return [n.op_type for n in m.graph.node]


def _matmul_model(k: int, n: int, signed: bool, per_tensor: bool = False, dq_axis: int = 1, extra_reader=False):
    rng = np.random.default_rng(k * n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q, s, zp = _per_channel(w, dq_axis, signed)
    if per_tensor:
        q, s, zp = _per_channel(w[None], 0, signed)
        q, s, zp = q[0], s.reshape(()), zp.reshape(())
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["w"], axis=dq_axis),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["w"], ["ws"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("ws", TensorProto.FLOAT, []))
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])], outputs,
               {"q": q, "s": s, "zp": zp})
    return m, rng.standard_normal((2, 3, k)).astype(np.float32)


@pytest.mark.parametrize("k,n,signed,per_tensor", [(64, 24, False, False), (40, 16, True, False), (48, 8, False, True)])
def test_a_per_channel_matmul_weight_becomes_8bit_matmulnbits_with_the_same_values(k, n, signed, per_tensor):
    m, x = _matmul_model(k, n, signed, per_tensor)
    want = x.astype(np.float64) @ _dequantized(m, 1)
    low = onnx.ModelProto()
    low.CopyFrom(m)
    got = lower(low, accuracy_level=0, matmul_8bit=True)
    assert got == {"accuracy_level": 0, "matmul_8bit": 1, "gather_8bit": 0}
    assert _ops(low) == ["MatMulNBits"] and {t.name for t in low.graph.initializer}.isdisjoint({"q", "s", "zp"})
    node = low.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # K = 40 tiles into no allowed block: 32 with the last block padded by the zero point
    assert attrs["bits"] == 8 and attrs["K"] == k and attrs["N"] == n and attrs["block_size"] == block_size(k)
    onnx.checker.check_model(low)
    # FP32 compute (level 0): the same weights, the same sums up to float rounding
    np.testing.assert_allclose(_run(low, {"x": x}), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # INT8 compute (level 4): activations quantized per block, close to the FP32 result
    lvl4 = onnx.ModelProto()
    lvl4.CopyFrom(m)
    lower(lvl4, accuracy_level=4)
    assert _ops(lvl4) == ["MatMulNBits"]
    err = np.abs(_run(lvl4, {"x": x}) - want).max() / np.abs(want).max()
    assert err < 0.03, err


def test_a_gemm_with_transposed_weight_and_bias():
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((12, 32)).astype(np.float32), rng.standard_normal(12).astype(np.float32)  # [N, K]
    q, s, zp = _per_channel(w, 0, signed=False)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["w"], axis=0),
                helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 12])], {"q": q, "s": s, "zp": zp, "b": b})
    x = rng.standard_normal((5, 32)).astype(np.float32)
    want = x.astype(np.float64) @ _dequantized(m, 0).T + b
    assert lower(m, accuracy_level=0, matmul_8bit=True)["matmul_8bit"] == 1
    assert _ops(m) == ["MatMulNBits"]
    np.testing.assert_allclose(_run(m, {"x": x}), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_an_embedding_table_becomes_gather_block_quantized_and_only_the_rows_read_are_dequantized():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    q, s, zp = _per_channel(table, 0, signed=False)
    m = _model([helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["t"], axis=0),
                helper.make_node("Gather", ["t", "ids"], ["y"], axis=0)],
               [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 64])], {"q": q, "s": s, "zp": zp})
    ids = np.array([[0, 7, 49, 7], [3, 3, 1, 2]], dtype=np.int64)
    want = _run(m, {"ids": ids})
    np.testing.assert_allclose(want, _dequantized(m, 0)[ids], rtol=1e-6)
    got = lower(m, accuracy_level=0)  # the Gather is lowered at any level: it is exact
    assert got["gather_8bit"] == 1 and _ops(m) == ["GatherBlockQuantized"]
    assert {t.name for t in m.graph.initializer}.isdisjoint({"q", "s", "zp"})
    np.testing.assert_array_equal(_run(m, {"ids": ids}), want)


def test_matmulnbits_gets_the_accuracy_level_and_level_0_leaves_the_int8_matmuls():
    m, x = _matmul_model(64, 16, signed=False)
    nb = helper.make_node("MatMulNBits", ["x2", "B", "S"], ["y2"], domain="com.microsoft", K=64, N=16, bits=4,
                          block_size=32, accuracy_level=0)
    m.graph.node.append(nb)
    assert lower(m, accuracy_level=0) == {"accuracy_level": 1, "matmul_8bit": 0, "gather_8bit": 0}
    assert _ops(m) == ["DequantizeLinear", "MatMul", "MatMulNBits"]
    assert lower(m, accuracy_level=4)["accuracy_level"] == 1
    assert [a.i for a in m.graph.node[-1].attribute if a.name == "accuracy_level"] == [4]


@pytest.mark.parametrize("case", ["input-channel scales", "read by another op"])
def test_what_does_not_match_is_left_as_it_was(case):
    m, x = _matmul_model(32, 16, signed=False, dq_axis=0 if case == "input-channel scales" else 1,
                         extra_reader=case == "read by another op")
    before = m.SerializeToString()
    assert lower(m, accuracy_level=4) == {"accuracy_level": 0, "matmul_8bit": 0, "gather_8bit": 0}
    assert m.SerializeToString() == before


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tests.tiny_lm import tied_llama_onnx

    d = tmp_path_factory.mktemp("nbits")
    return d, tied_llama_onnx(d, hidden=64, intermediate=128)[1]


@pytest.mark.parametrize("name", ["int8-weight", "int4-weight"])
def test_weight_only_candidates_of_a_tied_lm_dequantize_no_whole_table_per_step(tiny_lm, name):
    """The embedding and the tied head NNCF keeps in per-channel INT8 no longer go through a DequantizeLinear of the
    whole table on every decoding step; the candidate still decodes as the FP32 model does."""
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.quantize import make_candidate

    d, path = tiny_lm
    out = d / f"{name}.onnx"
    info = make_candidate(name, path, out, None, {"group_size": 32}, smoke=lambda p: None)
    ops = _ops(onnx.load(str(out)))
    assert "DequantizeLinear" not in ops and "GatherBlockQuantized" in ops, sorted(set(ops))
    assert info["settings"]["accuracy_level"] == 4
    low = info["settings"]["lowered"]
    assert low["gather_8bit"] == 1 and low["matmul_8bit"] >= 1  # the embedding and (at least) the head
    fp32, q = OrtLM(path), OrtLM(out)
    prompt = [1, 5, 9, 13, 17, 40]
    a, b = fp32.logits(prompt), q.logits(prompt)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8
    # accuracy_level 0: FP32 activations; MatMuls stay as NNCF wrote them, the Gather is still lowered
    out0 = d / f"{name}-0.onnx"
    info0 = make_candidate(name, path, out0, None, {"group_size": 32, "accuracy_level": 0}, smoke=lambda p: None)
    assert info0["settings"]["lowered"]["matmul_8bit"] == 0 and info0["settings"]["lowered"]["gather_8bit"] == 1


def test_a_build_made_before_the_lowering_quantizes_again(monkeypatch):
    """The makers' revisions are part of the keys of the stages that make candidates: a build folder whose
    weight-only graphs were written as NNCF wrote them does not reuse them."""
    import dataclasses

    from edgekd.quantize import candidates as C
    from edgekd.tasks.stages.quantize import with_host_key

    assert C.maker_revisions() == {"int4-weight": 2, "int8-weight": 2}
    cfg = with_host_key(lambda ctx: {"candidates": ["fp32", "int8-weight"]})
    now = cfg(None)
    monkeypatch.setitem(C.CANDIDATES, "int8-weight", dataclasses.replace(C.CANDIDATES["int8-weight"], revision=1))
    assert cfg(None) != now and cfg(None)["makers"] == {"int4-weight": 2}
