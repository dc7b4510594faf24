"""The stages every task shares: quantize, profile, select, convert, report.

Each is written once and asks the build's Task (tasks/base.py) for what differs. `graph(task)` is a task's
whole stage graph: its own stages (teacher, [generate], distill, export), then these.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.pipeline import Stage
    from edgekd.tasks.base import Task


def task_of(ctx) -> "Task":
    """The Task of the build a stage runs in (its recipe's `task:`)."""
    from edgekd.tasks import task_for

    return task_for(ctx.recipe.task)


@contextmanager
def progress_ticker(ctx, name: str) -> Iterator[Callable[[str, int], None]]:
    """A progress bar for the stage `name` while the block runs: yields tick(description, total), which advances
    it by one (a no-op without a console), and removes the bar however the block ends."""
    prog = ctx.progress
    bar = prog.add_task(name, total=None) if prog else None

    def tick(description: str, total: int) -> None:
        if prog:
            prog.update(bar, description=description, total=total)
            prog.advance(bar)

    try:
        yield tick
    finally:
        if prog:
            prog.remove_task(bar)


def graph(task: "Task") -> list["Stage"]:
    from edgekd.pipeline import Stage
    from edgekd.tasks.stages import convert, profile, quantize, quantized_teacher, report, select

    front = task.front()
    stages = [
        *front,
        Stage("quantize", quantize.stage_quantize, list(task.quantize_deps), quantize.with_host_key(task.quantize_cfg),
              reads=task.quantize_reads),
        Stage("profile", profile.stage_profile, list(task.profile_deps), task.profile_cfg, reads=task.profile_reads),
        Stage("select", select.stage_select, ["quantize", "profile"], select.select_cfg, reads=("recipe.quantize", "recipe.student.search")),
    ]
    if task.convert_job is not None:
        stages.append(Stage("convert", convert.stage_convert, list(task.convert_deps), convert.convert_cfg,
                            when=convert.has_convert, reads=task.convert_reads))
    if task.quantized_teacher is not None:  # the alternative to distilling, beside the student: report rows only
        stages.append(Stage(quantized_teacher.STAGE, quantized_teacher.stage_quantized_teacher,
                            list(task.quantized_teacher_deps), quantized_teacher.quantized_teacher_cfg,
                            when=quantized_teacher.enabled, reads=task.quantized_teacher_reads))
    stages.append(Stage("report", report.stage_report, [s.name for s in stages if s.name in task.report_stages
                                                        or s.name == quantized_teacher.STAGE], report.report_cfg))
    return stages
