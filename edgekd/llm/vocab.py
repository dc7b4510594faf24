"""A language-model student's output head trimmed to the tokens it was trained on (the `-vocab` candidates).

The head of a small student cut from its teacher keeps a row per token of the teacher's vocabulary (49k for SmolLM2):
about half the student's multiply-accumulates per decoded token. A student trained on a few thousand answers sees a
few thousand distinct tokens; `trim_head` keeps only those rows of the head in the student's ONNX graph, and maps
the kept logits back onto the whole vocabulary, so every consumer (greedy decoding, agreement, perplexity, the
runtimes) reads logits of the same shape and token ids as before:

    logits = Gather(Concat(hidden @ W[:, keep], floor), index)      index[v] = position of v in keep, else K

`floor` gives the V - K dropped tokens together the probability `dropped_mass` (q) at every position: floor =
logsumexp(kept logits) + log(q / ((1 - q)(V - K))). A build measures q on validation (the share of the teacher's
answer tokens outside the kept set), so the trimmed student's perplexity stays readable: a dropped token costs what
its rarity says, not an arbitrary penalty. q is capped so that every dropped token stays below the most likely kept
one (floor <= logsumexp - log K - log 2 <= max kept - log 2): greedy decoding never picks a dropped token. Without q
(`dropped_mass=None`) the floor is the smallest kept logit minus log(V - K), as the first -vocab builds had it: the
dropped tokens together as likely as the least likely kept one, so each costs far more than its rarity. The trimmed
head is an edit of the ONNX graph after training, made on the FP32 student before quantization; nothing is retrained.
Whether it pays is measured like every candidate: its next-token agreement on validation (the quantize stage's
budget) and its tokens/s (the profile stage).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgekd.errors import StageError

def training_vocab(sequences: Iterable[list[int]], always: Iterable[int] = ()) -> list[int]:
    """The sorted token ids that occur in the training sequences (prompts, answers, general text), plus `always`
    (the end and stop tokens: a student must be able to stop)."""
    keep = {int(t) for s in sequences for t in s} | {int(t) for t in always if t is not None and int(t) >= 0}
    return sorted(keep)


def _head(graph, output: str):
    """(the MatMul node that makes `output`, its weight as [hidden, vocab] numpy, the names that feed that weight)."""
    from onnx import numpy_helper

    prod = {o: n for n in graph.node for o in n.output}
    init = {t.name: t for t in graph.initializer}
    node = prod.get(output)
    if node is None or node.op_type != "MatMul":
        raise StageError(f"the head of this graph is not a MatMul making '{output}' "
                         f"({node.op_type if node is not None else 'no producer'})",
                         hint="vocabulary trimming supports heads exported as a MatMul (transformers' causal LMs)")
    w = node.input[1]
    if w in init:
        return node, numpy_helper.to_array(init[w]), [w]
    t = prod.get(w)
    perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None) if t is not None else None
    if t is not None and t.op_type == "Transpose" and t.input[0] in init and perm in (None, [1, 0]):
        return node, numpy_helper.to_array(init[t.input[0]]).T, [w]
    raise StageError("the head's weight is neither an initializer nor the transpose of one",
                     hint="vocabulary trimming supports heads exported as a MatMul with a constant weight")


def floor_gap(dropped_mass: float, vocab: int, kept: int) -> float:
    """log(q / ((1 - q)(V - K))), what the floor adds to logsumexp(kept logits), capped at -log K - log 2 (module
    docstring). ValueError for q outside (0, 1)."""
    q = float(dropped_mass)
    if not 0.0 < q < 1.0:
        raise ValueError(f"dropped_mass must be in (0, 1), got {q}")
    return min(math.log(q / ((1.0 - q) * (vocab - kept))), floor_cap(kept))


def floor_cap(kept: int) -> float:
    """The largest floor gap: -log K - log 2, below which no dropped token outranks the most likely kept one."""
    return -math.log(kept) - math.log(2.0)


def dropped_share(sequences: Iterable[list[int]], keep: Iterable[int]) -> dict[str, Any]:
    """The share of `sequences`' tokens (validation answers) outside `keep`, smoothed ((miss + 0.5) / (n + 1)) so that
    a validation set with no miss still leaves the dropped tokens a probability: the `dropped_mass` of trim_head."""
    kept = set(int(t) for t in keep)
    n = miss = 0
    for s in sequences:
        n += len(s)
        miss += sum(1 for t in s if int(t) not in kept)
    return {"dropped_mass": (miss + 0.5) / (n + 1), "missed": miss, "tokens": n}


def trim_head(src: Path, dst: Path, keep: list[int], output: str = "logits",
              dropped_mass: float | None = None) -> dict[str, Any]:
    """Write `src` (an FP32 causal-LM ONNX) to `dst` with its head reduced to the `keep` rows and the logits mapped back
    onto the whole vocabulary, the dropped tokens together at `dropped_mass` (module docstring). Returns what the
    report says of it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    node, w, fed = _head(g, output)
    hidden, vocab = w.shape
    keep_arr = np.asarray(sorted(set(keep)), dtype=np.int64)
    if keep_arr.size == 0 or keep_arr[0] < 0 or keep_arr[-1] >= vocab:
        raise StageError(f"the tokens to keep must be ids in [0, {vocab})", hint="this is a bug in edgekd")
    k = int(keep_arr.size)
    if k == vocab:
        raise StageError("every token of the vocabulary occurs in training: there is nothing to trim",
                         hint="leave the -vocab candidates out of quantize.candidates")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    kept_w = numpy_helper.from_array(np.ascontiguousarray(w[:, keep_arr]).astype(w.dtype), "edgekd.head.weight_kept")
    index = np.full(vocab, k, dtype=np.int64)
    index[keep_arr] = np.arange(k, dtype=np.int64)
    # floor = reduce(kept logits) + gap: logsumexp + floor_gap(q) when q is given, else min - log(V - K)
    op, gap = ("ReduceLogSumExp", floor_gap(dropped_mass, vocab, k)) if dropped_mass is not None else \
        ("ReduceMin", -math.log(vocab - k))
    g.initializer.extend([kept_w, numpy_helper.from_array(index, "edgekd.head.vocab_index"),
                          numpy_helper.from_array(np.array(gap, dtype=w.dtype), "edgekd.head.floor_gap")])
    node.input[1] = kept_w.name
    node.output[0] = "edgekd.head.kept_logits"
    if opset >= 18:
        g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "edgekd.head.last_axis"))
        reduce = helper.make_node(op, ["edgekd.head.kept_logits", "edgekd.head.last_axis"],
                                  ["edgekd.head.kept_reduced"], keepdims=1, name=f"edgekd.head.{op}")
    else:
        reduce = helper.make_node(op, ["edgekd.head.kept_logits"], ["edgekd.head.kept_reduced"], axes=[-1],
                                  keepdims=1, name=f"edgekd.head.{op}")
    rank = len(next(o for o in g.output if o.name == output).type.tensor_type.shape.dim)
    g.node.extend([
        reduce,
        helper.make_node("Add", ["edgekd.head.kept_reduced", "edgekd.head.floor_gap"], ["edgekd.head.floor"],
                         name="edgekd.head.Floor"),
        helper.make_node("Concat", ["edgekd.head.kept_logits", "edgekd.head.floor"], ["edgekd.head.extended"],
                         axis=rank - 1, name="edgekd.head.Concat"),
        helper.make_node("Gather", ["edgekd.head.extended", "edgekd.head.vocab_index"], [output], axis=rank - 1,
                         name="edgekd.head.Gather"),
    ])
    _drop_dead(g, fed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # a protobuf holds at most 2 GiB: a larger student keeps its weights in a file beside the graph, as exported
    big = sum(len(t.raw_data) for t in g.initializer) > 1_500_000_000
    onnx.save(model, str(dst), save_as_external_data=big, all_tensors_to_one_file=True,
              location=f"{dst.name}.data" if big else None)
    mass = ("each gets the smallest kept logit minus log of their count" if dropped_mass is None else
            f"together they keep {100 * min(dropped_mass, 1.0):.2g}% of the probability, the share of validation answer "
            "tokens outside the kept ones" + (", capped so that none outranks a kept token"
                                              if gap == floor_cap(k) else ""))
    return {"vocab": int(vocab), "kept": k, "hidden": int(hidden), "head_macs_per_token": int(hidden * k),
            "whole_head_macs_per_token": int(hidden * vocab), "dropped_mass": dropped_mass, "floor_gap": gap,
            "note": f"output head trimmed to the {k:,} tokens seen in training (of {vocab:,}): the other {vocab - k:,} "
                    f"can never be generated ({mass})"}


def _drop_dead(graph, names: list[str]) -> None:
    """Remove what fed the whole head's weight (`names`: its Transpose's output, or the initializer) where nothing else
    reads it: the Transpose node, then an initializer only it read."""
    for name in names:
        readers = [n for n in graph.node for i in n.input if i == name]
        if readers:
            continue
        for n in [n for n in graph.node if name in n.output]:
            graph.node.remove(n)
            _drop_dead(graph, list(n.input))
        for t in [t for t in graph.initializer if t.name == name]:
            graph.initializer.remove(t)
