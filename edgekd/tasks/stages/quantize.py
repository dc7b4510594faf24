"""The quantize stage, one loop for every task: make each candidate from the FP32 student ONNX, run it
once, judge it on validation data (the keep-in-FP32 search too), report it on test data.

What a candidate is judged by comes from the task's QuantizePlan (top-1 accuracy of a classifier,
next-token agreement of a language model); the candidate makers, their smoke run and their error
wrapping are quantize/candidates.py's, for every task.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekd.errors import StageError, UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.base import SCRATCH
from edgekd.tasks.stages import task_of


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
            kind, src, about = plan.variants[name]() if name in plan.variants else (name, fp32, {})
            entry.update(_candidate(kind, src, wd / rel, plan, ref_val, q, about))
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
    shutil.rmtree(wd / SCRATCH, ignore_errors=True)
    return StageOutput(outputs, {"candidates": results, "accuracy_metric": plan.metric,
                                 # asked for by the recipe, not made: the target cannot ship their kind
                                 "not_built": plan.not_built, **plan.metrics})


def _candidate(name: str, fp32: Path, dst: Path, plan, ref_val: float | None, q,
               about: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make one candidate (`name`: the maker; `fp32`: the graph it starts from, the exported student or a task's
    variant of it, `about` what its info says of that) and judge it; over the budget, the one keep-in-FP32 search
    (quantize/sensitivity.py) keeps nodes (a classifier's) or whole node kinds across layers (a language model's) in
    FP32, chosen on validation data."""
    from edgekd.quantize.budget import Budget
    from edgekd.quantize.candidates import CANDIDATES, accuracy_aware, keep_groups_fp32, make_candidate

    budget = Budget.from_recipe(q, metric=plan.metric)
    searchable = q.accuracy_aware and name != "fp32" and name in CANDIDATES and CANDIDATES[name].supports_exclusion
    aware = None
    if name in plan.special:
        info = plan.special[name](dst)
        val = plan.validate(dst)
    elif searchable and plan.grouping == "node":
        # makes the candidate, then keeps single nodes in FP32 while it is over the budget on validation data
        info = accuracy_aware(name, fp32, dst, plan.calib, plan.options, lambda p: plan.validate(p)["score"], budget)
        aware = info["accuracy_aware"]
        val = plan.validate(dst)
    else:
        info = make_candidate(name, fp32, dst, plan.calib, plan.options, smoke=plan.smoke)
        val = plan.validate(dst)
        if searchable and ref_val is not None and not budget.within(ref_val, val["score"]):
            last: dict[str, Any] = {}

            def score(p: Path) -> float:  # keeps the last full validation evaluation: it is the candidate's
                last.update(plan.validate(p))
                return last["score"]

            aware = keep_groups_fp32(name, fp32, dst, plan.options, score, reference=ref_val, initial=val["score"],
                                     budget=budget, rank_evaluate=plan.rank, notes=info.setdefault("notes", []),
                                     smoke=plan.smoke)
            val = dict(last) if aware["steps"] else val
    test = plan.test(dst)
    return {"size_bytes": dst.stat().st_size, "val_accuracy": val["score"], "accuracy": test["score"],
            **plan.fields(name, dst, val, test),
            "kept_fp32_nodes": (aware or {}).get("kept_fp32_nodes") or [],
            "info": _info(about or {}, info),
            "accuracy_aware": aware}


def _info(about: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The candidate's info: what its starting graph says (`about`), then its maker's (the notes of both)."""
    out = {**about, **{k: v for k, v in info.items() if k not in ("path", "accuracy_aware")}}
    notes = list(about.get("notes") or []) + list(info.get("notes") or [])
    if notes:
        out["notes"] = notes
    return out


def with_host_key(task_cfg):
    """The task's quantize settings plus edgekd.quantize.candidates.makers_key (the host's U8S8 reduce-range, the
    makers' revisions)."""
    def cfg(ctx):
        from edgekd.quantize.candidates import makers_key

        return {**task_cfg(ctx), **makers_key()}
    return cfg
