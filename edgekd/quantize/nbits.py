"""NNCF's weight-only ONNX onto onnxruntime's weight-only kernels.

NNCF's `compress_weights` writes blockwise INT4 as com.microsoft MatMulNBits (opset < 21) with
`accuracy_level` 0, and per-channel INT8 (int8-weight everywhere; under int4-weight the first and last
layers and the embedding table) as a `DequantizeLinear` of the whole constant before a plain MatMul or
Gather. On onnxruntime's CPU provider both are slow for a language model's decoding: the DequantizeLinear
runs every step over the whole table (a tied 49k x 576 head and embedding: two 28M-value dequantizations
per token, ~50 ms on a 2-core AVX2 host: the int4 candidate 6x slower than int8-dynamic), and MatMulNBits at
level 0 computes in FP32 (benchmarks/bench_weight_only.py measures both).

`lower` rewrites such a graph without changing a weight value:

- every MatMulNBits gets the `accuracy_level` asked for (4: INT8 compute on the activations, the level
  onnxruntime documents for its CPU kernels; 0 leaves NNCF's);
- `DequantizeLinear(W_q, scale, zero_point) -> MatMul(A, .)` with a constant 2-D W_q [K, N] quantized per
  output channel (or per tensor) becomes `MatMulNBits(A, W_q', scales, zero_points)` with bits=8: each
  channel's one scale repeated over its blocks of K, so the kernel dequantizes exactly the same values;
- `DequantizeLinear(W_q, ...) -> Gather(., ids, axis 0)` with W_q [V, H] quantized per row (or per tensor)
  becomes com.microsoft `GatherBlockQuantized` (bits=8): only the looked-up rows are dequantized.

A Gemm (no transA, alpha = beta = 1, a constant bias) is lowered as a MatMul is. The MatMul/Gemm lowering runs at
accuracy_level 4 only (at 0 onnxruntime's 8-bit kernel computes in FP32 and is slower than the DequantizeLinear it
replaces); the Gather one at any level (it is exact). What does not match (a DequantizeLinear read by other ops
too, a scale per input channel) is left as NNCF wrote it, and the result says how many of each were lowered.
"""
from __future__ import annotations

from typing import Any

MS = "com.microsoft"
BLOCK_SIZES = (128, 64, 32, 16)  # MatMulNBits and GatherBlockQuantized take powers of two >= 16


def block_size(k: int) -> int:
    """The largest allowed block that tiles `k` exactly (32 with padding when none does: a per-channel scale is
    repeated, so the padding of the last block changes no value)."""
    return next((b for b in BLOCK_SIZES if k % b == 0), 32)


def _const(graph) -> dict[str, Any]:
    return {t.name: t for t in graph.initializer}


def _channel_params(w_q, scale, zp, channel_axis: int):
    """(uint8 weights, float32 scale per channel, uint8 zero point per channel) of a per-channel/per-tensor
    DequantizeLinear along `channel_axis`; None when its layout is not one of those."""
    import numpy as np

    n = w_q.shape[channel_axis]
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    if scale.size == 1:
        scale = np.full(n, scale[0], dtype=np.float32)
    if scale.size != n:
        return None
    if zp is None:
        zp = np.zeros(1, dtype=w_q.dtype)
    zp = np.asarray(zp).reshape(-1)
    if zp.size == 1:
        zp = np.full(n, zp[0], dtype=zp.dtype)
    if zp.size != n:
        return None
    if w_q.dtype == np.int8:  # signed: shift onto uint8, zero points with it (value = (q - zp) * s unchanged)
        w_u = (w_q.astype(np.int16) + 128).astype(np.uint8)
        zp_u = (zp.astype(np.int16) + 128).astype(np.uint8)
    elif w_q.dtype == np.uint8:
        w_u, zp_u = w_q, zp.astype(np.uint8)
    else:
        return None
    return w_u, scale, zp_u


def _blocks(w_rows, scale, zp, bs: int):
    """Rows [n, k] (each row one channel) cut into blocks of `bs` along k, padded with the row's zero point:
    (data [n, blocks, bs] uint8, scales [n, blocks] float32, zero points [n, blocks] uint8)."""
    import numpy as np

    n, k = w_rows.shape
    nb = -(-k // bs)
    data = np.repeat(zp[:, None], nb * bs, axis=1).astype(np.uint8)
    data[:, :k] = w_rows
    return (data.reshape(n, nb, bs), np.repeat(scale[:, None], nb, axis=1).astype(np.float32),
            np.repeat(zp[:, None], nb, axis=1).astype(np.uint8))


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _linear_layout(user, dq_out: str, inits: dict[str, Any]):
    """For a MatMul or Gemm that reads `dq_out` as its weight (B): (channel axis of the weight, bias name or "");
    None when it is not a plain A @ W (+ bias) the kernel computes (A's side, Gemm's alpha/beta/transA, a bias
    that is not a constant of N values)."""
    import numpy as np
    from onnx import numpy_helper

    if user.domain not in ("", "ai.onnx") or len(user.input) < 2 or user.input[1] != dq_out or user.input[0] == dq_out:
        return None
    if user.op_type == "MatMul":
        return 1, ""
    if user.op_type != "Gemm":
        return None
    a = _attrs(user)
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        return None
    bias = user.input[2] if len(user.input) > 2 else ""
    if bias and (bias not in inits or np.asarray(numpy_helper.to_array(inits[bias])).squeeze().ndim > 1):
        return None
    return (0 if a.get("transB", 0) else 1), bias


def lower(model, accuracy_level: int = 4, matmul_8bit: bool | None = None) -> dict[str, int]:
    """Rewrite `model` (an onnx ModelProto, in place) as the module docstring says. `matmul_8bit` (default: only at
    accuracy_level 4, where onnxruntime's 8-bit kernel computes in INT8; at 0 it is slower than the
    DequantizeLinear it replaces) lowers the per-channel INT8 MatMul/Gemm weights. Returns
    {"accuracy_level": MatMulNBits nodes set, "matmul_8bit": MatMul/Gemm lowered, "gather_8bit": Gathers lowered}."""
    import numpy as np
    from onnx import helper, numpy_helper

    from edgekd.onnxgraph import ensure_domain_imports

    if matmul_8bit is None:
        matmul_8bit = accuracy_level == 4
    g = model.graph
    out = {"accuracy_level": 0, "matmul_8bit": 0, "gather_8bit": 0}
    for node in g.node:
        if node.op_type == "MatMulNBits" and node.domain == MS:
            for a in list(node.attribute):
                if a.name == "accuracy_level":
                    node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("accuracy_level", int(accuracy_level)))
            out["accuracy_level"] += 1

    inits = _const(g)
    readers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    graph_outputs = {o.name for o in g.output}
    new_inits, drop, replace = [], set(), {}
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx") or dq.output[0] in graph_outputs:
            continue
        ins = list(dq.input) + [""] * (3 - len(dq.input))
        users = readers.get(dq.output[0], [])
        if not users or ins[0] not in inits or ins[1] not in inits or (ins[2] and ins[2] not in inits):
            continue
        attrs = _attrs(dq)
        w_q = numpy_helper.to_array(inits[ins[0]])
        if attrs.get("block_size", 0) or w_q.ndim != 2:
            continue
        axis = int(attrs.get("axis", 1)) % 2
        scale = numpy_helper.to_array(inits[ins[1]])
        zp = numpy_helper.to_array(inits[ins[2]]) if ins[2] else None
        stem = dq.output[0].replace("/", "_").strip("_")
        layouts = [_linear_layout(u, dq.output[0], inits) for u in users]
        if matmul_8bit and all(lay is not None for lay in layouts) and len({lay[0] for lay in layouts}) == 1:
            ch = layouts[0][0]
            params = _channel_params(w_q, scale, zp, ch) if (scale.size == 1 or axis == ch) else None
            if params is None:
                continue  # a scale per input channel: not one MatMulNBits block layout
            rows = params[0].T if ch == 1 else params[0]  # [N, K]
            n, k = rows.shape
            bs = block_size(k)
            data, sc, zps = _blocks(rows, params[1], params[2], bs)
            names = (f"{stem}_nbits_B", f"{stem}_nbits_scales", f"{stem}_nbits_zp")
            new_inits += [numpy_helper.from_array(data, names[0]), numpy_helper.from_array(sc.reshape(-1), names[1]),
                          numpy_helper.from_array(zps.reshape(-1), names[2])]
            for u, (_, bias) in zip(users, layouts):
                inputs = [u.input[0], *names]
                if bias:
                    b = np.asarray(numpy_helper.to_array(inits[bias]), dtype=np.float32).reshape(-1)
                    if b.size == 1:
                        b = np.full(n, b[0], dtype=np.float32)
                    new_inits.append(numpy_helper.from_array(b, f"{bias}_nbits_bias"))
                    inputs += ["", f"{bias}_nbits_bias"]
                replace[id(u)] = helper.make_node(
                    "MatMulNBits", inputs, list(u.output), name=(u.name or stem) + "_nbits8", domain=MS,
                    K=k, N=n, bits=8, block_size=bs, accuracy_level=int(accuracy_level))
                out["matmul_8bit"] += 1
            drop.add(id(dq))
        elif all(u.op_type == "Gather" and u.domain in ("", "ai.onnx") and u.input[0] == dq.output[0]
                 and u.input[1] != dq.output[0] and int(_attrs(u).get("axis", 0)) == 0 for u in users):
            params = _channel_params(w_q, scale, zp, 0) if (scale.size == 1 or axis == 0) else None
            v, h = w_q.shape
            bs = block_size(h)
            if params is None or h % bs:
                continue  # a scale per column, or rows that are not whole blocks
            data, sc, zps = _blocks(params[0], params[1], params[2], bs)
            names = (f"{stem}_gbq_data", f"{stem}_gbq_scales", f"{stem}_gbq_zp")
            new_inits += [numpy_helper.from_array(data.reshape(v, h), names[0]), numpy_helper.from_array(sc, names[1]),
                          numpy_helper.from_array(zps, names[2])]
            for u in users:
                replace[id(u)] = helper.make_node(
                    "GatherBlockQuantized", [names[0], u.input[1], names[1], names[2]], list(u.output),
                    name=(u.name or stem) + "_gbq8", domain=MS, gather_axis=0, quantize_axis=1, block_size=bs, bits=8)
                out["gather_8bit"] += 1
            drop.add(id(dq))
    if not replace:
        return out
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | graph_outputs
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    ensure_domain_imports(model)
    return out
