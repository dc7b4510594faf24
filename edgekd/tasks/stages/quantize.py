"""The quantize stage, one loop for every task: make each candidate from the FP32 student ONNX, run it
once, judge it on validation data (the keep-in-FP32 search too), report it on test data.

What a candidate is judged by comes from the task's QuantizePlan (top-1 accuracy of a classifier,
next-token agreement of a language model); the candidate makers, their smoke run and their error
wrapping are quantize/candidates.py's, for every task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import StageError, UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult


def task_of(ctx: BuildContext):
    from edgekd.tasks import task_for

    return task_for(ctx.recipe.task)


def stage_quantize(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    plan = task_of(ctx).quantize_plan(inputs, ctx, wd)
    fp32 = inputs["export"].path("student")
    q = ctx.recipe.quantize
    (wd / "candidates").mkdir()
    results, outputs = [], {}
    ref_val: float | None = None  # fp32's validation score: fp32 is made first, the others are judged against it
    prog = ctx.progress
    bar = prog.add_task("quantize", total=len(plan.names)) if prog else None
    for name in plan.names:
        if prog:
            prog.update(bar, description=f"quantize {name}")
        rel = f"candidates/{name}.onnx"
        entry: dict[str, Any] = {"variant": name, "format": "onnx", "path": rel, "error": None}
        try:
            entry.update(_candidate(name, fp32, wd / rel, plan, ref_val, q))
            if name == "fp32":
                ref_val = entry["val_accuracy"]
            outputs[name] = rel
        except UserError:
            raise  # bad calibration data or options: the user's to fix, exit 2
        except StageError as e:
            if name == "fp32":
                raise
            entry["error"] = e.message
            (wd / rel).unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001 - a candidate's converter crashing must not sink the build; recorded
            if name == "fp32":
                raise
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            (wd / rel).unlink(missing_ok=True)
        results.append(entry)
        if prog:
            prog.advance(bar)
    if prog:
        prog.remove_task(bar)
    return StageOutput(outputs, {"candidates": results, "accuracy_metric": plan.metric,
                                 # asked for by the recipe, not made: the target cannot ship their kind
                                 "not_built": plan.not_built, **plan.metrics})


def _candidate(name: str, fp32: Path, dst: Path, plan, ref_val: float | None, q) -> dict[str, Any]:
    from edgekd.quantize.candidates import CANDIDATES, make_candidate

    if name in plan.special:
        info = plan.special[name](dst)
    else:
        info = make_candidate(name, fp32, dst, plan.calib, plan.options, smoke=plan.smoke)
    val = plan.validate(dst)
    aware = None
    if ref_val is not None and q.accuracy_aware and name in CANDIDATES and CANDIDATES[name].supports_exclusion:
        aware, val = _keep_in_fp32(name, fp32, dst, plan, val, ref_val, q.accuracy_budget)
    test = plan.test(dst)
    return {"size_bytes": dst.stat().st_size, "val_accuracy": val["score"], "accuracy": test["score"],
            **plan.fields(name, dst, val, test),
            "kept_fp32_nodes": (aware or {}).get("kept_fp32_nodes") or [],
            "info": {k: v for k, v in info.items() if k not in ("path", "accuracy_aware")},
            "accuracy_aware": aware}


def _keep_in_fp32(name: str, fp32: Path, dst: Path, plan, first: dict[str, Any], ref_val: float,
                  budget_points: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keep-in-FP32 search on validation data: (its record, the final candidate's validation evaluation)."""
    from edgekd.quantize.candidates import accuracy_aware

    if plan.grouping == "layer-groups":
        return _keep_layer_groups(name, fp32, dst, plan, first, ref_val, budget_points)
    info = accuracy_aware(name, fp32, dst, plan.calib, plan.options, lambda p: plan.validate(p)["score"], budget_points)
    return info["accuracy_aware"], plan.validate(dst)


def _keep_layer_groups(name: str, fp32: Path, dst: Path, plan, first: dict[str, Any], ref_val: float,
                       budget_points: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keep whole node kinds across every layer (sensitivity.layer_groups) in FP32, the one whose exclusion
    recovers most of the validation score first, until within budget or `max_exclusion_steps` (default 3)."""
    import onnx

    from edgekd.quantize import sensitivity
    from edgekd.quantize.candidates import make_candidate
    from edgekd.quantize.select import within_budget

    options = plan.options
    groups = sensitivity.layer_groups(onnx.load(str(dst), load_external_data=False))
    base = list(options.get("nodes_to_exclude") or [])

    def make(kept_groups: list[str], out: Path) -> None:
        excluded = base + [n for g in kept_groups for n in groups[g]]
        make_candidate(name, fp32, out, plan.calib, {**options, "nodes_to_exclude": excluded}, smoke=plan.smoke)

    rank = plan.rank or (lambda p: plan.validate(p)["score"])
    ev, kept, steps, ranking = first, [], [], []
    fits = within_budget(ref_val, first["score"], budget_points)
    trial = dst.with_name(dst.stem + ".trial.onnx")
    try:
        for _ in range(0 if fits else int(options.get("max_exclusion_steps", 3))):
            scores = []
            for g in (g for g in groups if g not in kept):
                make(kept + [g], trial)
                scores.append((rank(trial), g))
            if not scores:
                break
            scores.sort(key=lambda x: (-x[0], x[1]))
            ranking = ranking or [{"group": g, "nodes": len(groups[g]), "score": a} for a, g in scores[:10]]
            kept.append(scores[0][1])
            make(kept, dst)
            ev = plan.validate(dst)
            steps.append({"kept_fp32": kept[-1], "nodes": len(groups[kept[-1]]), "accuracy": ev["score"]})
            fits = within_budget(ref_val, ev["score"], budget_points)
            if fits:
                break
    finally:
        trial.unlink(missing_ok=True)
    return {"fp32_val_accuracy": ref_val, "initial_accuracy": first["score"], "max_drop_points": budget_points,
            "method": "group-exclusion", "groups": len(groups), "kept_fp32_groups": kept,
            "kept_fp32_nodes": base + [n for g in kept for n in groups[g]], "steps": steps, "ranking": ranking,
            "within_budget": fits}, ev
