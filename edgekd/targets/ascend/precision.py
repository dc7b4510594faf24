"""Ascend precision preflight on the host (no CANN needed).

ATC's default `--precision_mode=allow_fp32_to_fp16` runs the cube operators (Conv, MatMul, Gemm)
in FP16 on the NPU; `force_fp16` runs every operator in FP16. Accuracy lost there shows up only on
the Ascend host, after the bundle shipped. This module simulates the mode on the host: the static
model is rewritten with onnxruntime's float16 converter so exactly the operators the mode would
run in FP16 take FP16 weights and activations (inputs/outputs of the model stay FP32), and the
rewritten model's top-1 agreement with the FP32 model is measured on the validation split (the choice)
and its accuracy on the test split (reported only).

When the simulated agreement falls past the budget, each FP16 operator is tried alone in FP16
(per-layer sensitivity: mean |logit - fp32 logit| on validation samples), and the most sensitive
ones are kept in FP32, one at a time (edgekd.quantize.sensitivity.keep_fp32_search), until the
validation agreement is back within the budget. Test data never steers that choice. Their names go
into `keep_dtype.cfg`, which the bundle's convert.sh passes to ATC as `--keep_dtype` (one ONNX
node name per line; CANN ATC docs, "--keep_dtype": a config file listing operator names of the
original model, or OpType::TypeName lines; ignored under must_keep_origin_dtype).

What the simulation is: rounding to FP16 at each FP16 operator's inputs, weights and outputs, the
operator itself computing in FP32 (as the cube accumulates in FP32). Ascend vector-unit numerics,
FP16 overflow inside an operator and ATC's own fusions are not modelled.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.errors import DataError

# Operators ATC maps onto the cube unit (FP16 under allow_fp32_to_fp16 / mixed precision).
CUBE_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
KEEP_DTYPE_FILE = "keep_dtype.cfg"

# What the host simulation runs in FP16 for each ATC --precision_mode:
#   "cube" = the cube operators, "all" = every float operator, None = nothing (FP32 reference),
#   "bf16" = not simulated (bfloat16; onnxruntime CPU has no bf16 kernels for these ops).
MODE_FP16_SCOPE: dict[str, str | None] = {
    "force_fp32": None,
    "must_keep_origin_dtype": None,
    "cube_fp16in_fp32out": "cube",
    "allow_fp32_to_fp16": "cube",
    "allow_mix_precision": "cube",
    "allow_mix_precision_fp16": "cube",
    "force_fp16": "all",
    "allow_mix_precision_bf16": "bf16",
    "allow_fp32_to_bf16": "bf16",
}


def _node_names(model: Any) -> None:
    """Give every node a unique name: keep_dtype.cfg and the block lists address nodes by name."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)


def fp16_nodes(model: Any, scope: str) -> list[str]:
    """Names of the nodes the mode runs in FP16 (in graph order)."""
    if scope == "all":
        return [n.name for n in model.graph.node if n.op_type not in ("Cast", "Shape", "Constant")]
    return [n.name for n in model.graph.node if n.op_type in CUBE_OPS]


def _float_tensors(model: Any) -> set[str]:
    """Names of the FLOAT tensors of the graph (inputs, initializers, inferred intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            out.add(vi.name)
    return out


def to_fp16(model: Any, fp16: list[str], out_path: Path) -> Path:
    """Write a copy of `model` where the nodes named in `fp16` see FP16-rounded weights and inputs
    and produce FP16-rounded outputs; everything else stays FP32.

    The rounding is explicit (Cast to FLOAT16 and back, weights rounded through numpy float16)
    rather than an FP16 graph: onnxruntime's CPU provider computes chains of FP16 nodes that lack
    FP16 kernels in FP32 and drops the casts between them, which would hide the rounding.
    """
    import copy

    import onnx
    from onnx import helper, numpy_helper

    from edgekd.onnxgraph import topological_sort

    m = copy.deepcopy(model)
    floats = _float_tensors(m)
    inits = {i.name: i for i in m.graph.initializer}
    chosen = set(fp16)
    rounded: dict[str, str] = {}
    new_inits, new_nodes = [], []

    def round_tensor(name: str) -> str:
        if name in rounded:
            return rounded[name]
        r = f"{name}__fp16r"
        if name in inits:
            arr = numpy_helper.to_array(inits[name])
            new_inits.append(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), r))
        else:
            new_nodes.append(helper.make_node("Cast", [name], [f"{name}__fp16"], name=f"{name}__to_fp16",
                                              to=onnx.TensorProto.FLOAT16))
            new_nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [r], name=f"{name}__from_fp16",
                                              to=onnx.TensorProto.FLOAT))
        rounded[name] = r
        return r

    for node in m.graph.node:
        if node.name not in chosen:
            continue
        for i, name in enumerate(node.input):
            if name and name in floats:
                node.input[i] = round_tensor(name)
        for i, name in enumerate(node.output):
            if name and name in floats:
                pre = f"{name}__pre_fp16"
                node.output[i] = pre
                new_nodes.append(helper.make_node("Cast", [pre], [f"{name}__out16"], name=f"{name}__out_to_fp16",
                                                  to=onnx.TensorProto.FLOAT16))
                new_nodes.append(helper.make_node("Cast", [f"{name}__out16"], [name], name=f"{name}__out_from_fp16",
                                                  to=onnx.TensorProto.FLOAT))
    m.graph.initializer.extend(new_inits)
    m.graph.node.extend(new_nodes)
    del m.graph.value_info[:]
    topological_sort(m)
    onnx.save(m, str(out_path))
    return out_path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs over `x` with graph optimizations off, so no optimizer folds the rounding casts away."""
    from edgekd.runtimes.ort import session

    sess = session(path, threads=1, optimization="disable")
    inp = sess.get_inputs()[0]
    bs = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 256
    outs = [sess.run(None, {inp.name: x[i:i + bs]})[0] for i in range(0, len(x), bs)]
    return np.concatenate(outs)


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    from edgekd.runtimes.ort import top1_accuracy

    return top1_accuracy(logits, y)


AGREEMENT = "top-1 agreement with fp32"  # the metric every choice here is made on (validation split)


def fp16_preflight(static_model: Path | str, mode: str, x_test: np.ndarray, y_test: np.ndarray,
                   x_val: np.ndarray, budget_points: float, *, max_sensitivity_samples: int = 256,
                   max_keep: int = 16, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Simulate `mode` on the host; when it costs more than `budget_points` (points, i.e. percent) of top-1
    agreement with the FP32 model on the VALIDATION split, find the FP16 layers responsible and keep them
    in FP32 (sensitivity.keep_fp32_search over single nodes) until it is back within the budget.

    Every choice (whether to keep anything, which layers, when to stop) reads validation inputs only;
    agreement with FP32 needs no labels, and it bounds the accuracy change from above. The test split
    only reports: fp32/fp16 accuracy and the accuracy with the kept layers.

    Returns {mode, scope, fp32_accuracy, fp16_accuracy, drop_points, within_budget, keep_fp32,
    accuracy_with_keep, sensitivity: [{node, op_type, mean_abs_diff, top1_agreement}], choice, ...};
    accuracies and drop_points are the test split's, within_budget* the validation choice's.
    """
    import onnx

    from edgekd.quantize.budget import Budget
    from edgekd.quantize.sensitivity import keep_fp32_search

    budget = Budget(float(budget_points), metric=AGREEMENT)
    if x_val is None or len(x_val) == 0:
        raise DataError("the Ascend FP16 preflight needs validation samples: it chooses the FP32-kept layers on them",
                        hint="keep a validation split (data.val_fraction > 0); the test split only reports")
    scope = MODE_FP16_SCOPE.get(mode)
    model = onnx.load(str(static_model))
    _node_names(model)
    fp32_logits = _run(Path(static_model), x_test)
    fp32_acc = _acc(fp32_logits, y_test)
    result: dict[str, Any] = {
        "mode": mode, "scope": scope, "samples": int(len(y_test)), "split": "test", "measured_on": "host",
        "method": "onnxruntime CPU, FP16 rounding at the FP16 operators' inputs/weights/outputs",
        "choice": {"split": "validation", "samples": int(len(x_val)), "metric": AGREEMENT},
        "fp32_accuracy": fp32_acc, "fp16_accuracy": None, "drop_points": None, "budget_points": float(budget_points),
        "within_budget": True, "keep_fp32": [], "accuracy_with_keep": None, "sensitivity": []}
    if scope is None:
        result["note"] = f"{mode} keeps FP32 on the NPU: nothing to simulate (the FP32 accuracy applies)"
        result["fp16_accuracy"] = fp32_acc
        result["drop_points"] = 0.0
        return result
    if scope == "bf16":
        result["note"] = f"{mode} runs bfloat16, which this host simulation does not model"
        result["within_budget"] = None
        return result
    candidates = fp16_nodes(model, scope)
    types = {n.name: n.op_type for n in model.graph.node}
    ref_val = _run(Path(static_model), x_val).argmax(-1)

    def val_agreement(path: Path) -> float:
        return float((_run(path, x_val).argmax(-1) == ref_val).mean())

    with tempfile.TemporaryDirectory(prefix="edgekd-fp16-") as tmp:
        work = Path(tmp)
        full = to_fp16(model, candidates, work / "fp16.onnx")
        fp16_acc = _acc(_run(full, x_test), y_test)
        agree = val_agreement(full)
        result.update({"fp16_accuracy": fp16_acc, "drop_points": (fp32_acc - fp16_acc) * 100.0,
                       "fp16_nodes": len(candidates), "val_agreement": agree,
                       "within_budget": budget.within(1.0, agree)})
        if result["within_budget"] or not candidates:
            return result
        # Per-layer sensitivity: each FP16 node alone in FP16, the rest FP32, on validation samples.
        xs = x_val[:max_sensitivity_samples]
        ref = _run(Path(static_model), xs)
        sens = []
        for i, name in enumerate(candidates):
            got = _run(to_fp16(model, [name], work / f"one_{i}.onnx"), xs)
            sens.append({"node": name, "op_type": types[name],
                         "mean_abs_diff": float(np.abs(got.astype(np.float64) - ref).mean()),
                         "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())})
        sens.sort(key=lambda s: (-s["mean_abs_diff"], s["top1_agreement"]))
        result["sensitivity"] = sens

        def build(keep: list[str], path: Path) -> None:
            to_fp16(model, [c for c in candidates if c not in keep], path)

        keep_path = work / "keep.onnx"
        found = keep_fp32_search({c: [c] for c in candidates}, build, val_agreement, keep_path, reference=1.0,
                                 initial=agree, budget=budget, order=[s["node"] for s in sens], max_steps=max_keep,
                                 log=(lambda line: log(f"  fp16 preflight: {line.strip()}")) if log else None)
        acc = _acc(_run(keep_path, x_test), y_test) if found.kept_nodes else fp16_acc  # reported, never steering
        result.update({"keep_fp32": found.kept_nodes, "accuracy_with_keep": acc,
                       "drop_points_with_keep": (fp32_acc - acc) * 100.0,
                       "val_agreement_with_keep": found.score, "within_budget_with_keep": found.within_budget})
    return result


def keep_dtype_text(nodes: list[str]) -> str:
    """ATC --keep_dtype file: one original-model operator name per line."""
    return "".join(f"{n}\n" for n in nodes)


LM_AGREEMENT = "next-token agreement with fp32"  # the language model's choice metric (validation sequences)


def lm_fp16_preflight(prefill: Path | str, mode: str, val: list[Any], test: list[Any], budget_points: float, *,
                      max_examples: int = 16, max_keep: int = 8,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The FP16 preflight of a language model's static prefill/decode pair, on next-token agreement.

    The prefill graph (the decode graph has the same operators under the same names) is rewritten as for
    classifiers and run by teacher forcing over validation sequences (llm.sequences.Example, at most
    `max_examples`). The choice: agreement of its argmax with the FP32 graph's at every answer position; when
    it falls past `budget_points`, whole projection kinds across every layer (`/model/layers.*/mlp/down_proj/
    MatMul`: one decision per kind, as the language model's quantization search makes it) are kept in FP32 by
    the shared keep_fp32_search. The test split only reports: next-token agreement with the teacher's tokens
    for FP32, FP16 and FP16 with the kept layers. `keep_fp32` names nodes, valid in both graphs."""
    import onnx

    from edgekd.llm.static_kv import StaticLM, evaluate_static
    from edgekd.quantize.budget import Budget
    from edgekd.quantize.sensitivity import group_name, keep_fp32_search

    if not val:
        raise DataError("the Ascend FP16 preflight needs validation sequences: it chooses the FP32-kept layers on them",
                        hint="keep a validation split (data.val_fraction > 0); the test split only reports")
    budget = Budget(float(budget_points), metric=LM_AGREEMENT)
    val, test = list(val)[:max_examples], list(test)[:max_examples]
    scope = MODE_FP16_SCOPE.get(mode)

    def ev(path: Path, examples: list[Any]) -> dict[str, Any]:
        # optimizations off: no optimizer may fold the rounding casts away
        return evaluate_static(StaticLM(path, None, optimization="disable"), examples)

    ref_val = ev(Path(prefill), val)["argmax"]
    fp32_test = ev(Path(prefill), test)["agreement"] if test else None
    result: dict[str, Any] = {
        "mode": mode, "scope": scope, "split": "test", "examples": len(test), "measured_on": "host",
        "metric": "next-token agreement with the teacher's tokens (teacher forcing through the static prefill graph)",
        "method": "onnxruntime CPU, FP16 rounding at the FP16 operators' inputs/weights/outputs",
        "choice": {"split": "validation", "examples": len(val), "tokens": int(len(ref_val)), "metric": LM_AGREEMENT},
        "fp32_agreement": fp32_test, "fp16_agreement": None, "drop_points": None, "budget_points": float(budget_points),
        "within_budget": True, "keep_fp32": [], "keep_fp32_groups": [], "agreement_with_keep": None}
    if scope is None:
        result.update({"note": f"{mode} keeps FP32 on the NPU: nothing to simulate", "fp16_agreement": fp32_test,
                       "drop_points": 0.0})
        return result
    if scope == "bf16":
        result.update({"note": f"{mode} runs bfloat16, which this host simulation does not model", "within_budget": None})
        return result
    model = onnx.load(str(prefill))
    _node_names(model)
    candidates = fp16_nodes(model, scope)
    groups: dict[str, list[str]] = {}
    for n in candidates:
        groups.setdefault(group_name(n), []).append(n)

    def val_agreement(path: Path) -> float:
        return float((ev(path, val)["argmax"] == ref_val).mean())

    def test_agreement(path: Path) -> float | None:
        return ev(path, test)["agreement"] if test else None

    with tempfile.TemporaryDirectory(prefix="edgekd-lm-fp16-") as tmp:
        work = Path(tmp)
        full = to_fp16(model, candidates, work / "fp16.onnx")
        agree = val_agreement(full)
        fp16_test = test_agreement(full)
        result.update({"fp16_agreement": fp16_test, "fp16_nodes": len(candidates), "groups": len(groups),
                       "drop_points": (fp32_test - fp16_test) * 100.0 if fp16_test is not None else None,
                       "val_agreement": agree, "within_budget": budget.within(1.0, agree)})
        if result["within_budget"] or not candidates:
            return result

        def build(keep: list[str], path: Path) -> None:
            to_fp16(model, [c for c in candidates if c not in keep], path)

        keep_path = work / "keep.onnx"
        found = keep_fp32_search(groups, build, val_agreement, keep_path, reference=1.0, initial=agree, budget=budget,
                                 max_steps=max_keep,
                                 log=(lambda line: log(f"  lm fp16 preflight: {line.strip()}")) if log else None)
        with_keep = test_agreement(keep_path) if found.kept_nodes else fp16_test  # reported, never steering
        result.update({"keep_fp32": found.kept_nodes, "keep_fp32_groups": found.kept_groups,
                       "agreement_with_keep": with_keep, "ranking": found.ranking,
                       "drop_points_with_keep": (fp32_test - with_keep) * 100.0 if with_keep is not None else None,
                       "val_agreement_with_keep": found.score, "within_budget_with_keep": found.within_budget})
    return result
