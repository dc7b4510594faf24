"""The quantized_teacher stage, one for every task: the alternative a user would pick over distilling — the teacher
itself quantized by the student's candidate makers (the same kinds and options, so the host's reduce_range applies
alike), scored on the student's test examples and timed by the student's benchmark and settings. Its rows are
report rows with role teacher, never selection candidates: select reads the quantize stage only, and this stage's
key is its own (a change here reruns this stage and the report, nothing else)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, StageError, UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.stages import progress_ticker, task_of

STAGE = "quantized_teacher"


def kinds(ctx: BuildContext) -> list[str]:
    """evaluate.quantized_teacher, or the task's kinds where the card leaves it null."""
    given = ctx.recipe.evaluate.quantized_teacher
    return list(task_of(ctx).quantized_teacher_kinds if given is None else given)


def enabled(ctx: BuildContext) -> bool:
    return task_of(ctx).quantized_teacher is not None and bool(kinds(ctx))


def quantized_teacher_cfg(ctx: BuildContext) -> dict[str, Any]:
    from edgekd.quantize.candidates import makers_key

    task = task_of(ctx)
    names = kinds(ctx)
    bad = [k for k in names if k not in task.quantized_teacher_allowed]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"evaluate.quantized_teacher: {bad or names} — not kinds a {task.name} teacher is made as"
                          if bad else f"evaluate.quantized_teacher lists a kind twice: {names}",
                          hint=f"valid here: {', '.join(task.quantized_teacher_allowed)}; [] turns it off")
    assert task.quantized_teacher_cfg is not None  # enabled() holds: the stage runs only for such a task
    return {"kinds": names, **task.quantized_teacher_cfg(ctx), **makers_key()}


def stage_quantized_teacher(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    task = task_of(ctx)
    assert task.quantized_teacher is not None
    with progress_ticker(ctx, "quantized teacher") as tick:
        rows = task.quantized_teacher(inputs, ctx, wd, kinds(ctx), tick)
    outputs = {r["variant"]: r["path"] for r in rows.values() if r.get("error") is None}
    return StageOutput(outputs, {"models": rows})


def make_each(kinds_: list[str], make_one) -> dict[str, dict[str, Any]]:
    """`make_one(kind)` for each kind; a kind whose converter fails is recorded with its error (the build goes on,
    as for a student candidate), a user error (bad options) stops it."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in kinds_:
        try:
            rows[f"teacher/{kind}"] = make_one(kind)
        except UserError:
            raise
        except StageError as e:
            rows[f"teacher/{kind}"] = {"variant": kind, "quantization": kind, "error": e.message}
        except Exception as e:  # noqa: BLE001 - a converter crashing must not sink the build; recorded in the row
            rows[f"teacher/{kind}"] = {"variant": kind, "quantization": kind,
                                       "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    return rows


def read_rows(build_dir: Path, run: dict) -> list[dict[str, Any]]:
    """This build's quantized-teacher rows (none where the stage did not run in this build's lineage: a folder left
    by an earlier build with the option on is not this build's)."""
    from edgekd.fsio import read_result

    if not any(s.get("stage") == STAGE for s in run.get("stages") or []):
        return []
    res = read_result(build_dir / STAGE)
    return list((((res or {}).get("metrics") or {}).get("models") or {}).values())
