"""Which student architecture a classification build trains: the card's, or the search stage's winner.

Its own module (importing no other classification module) so the stages that read it (distill, export, the
hooks) and the search stage that makes it import no cycle."""
from __future__ import annotations

from typing import Any

from edgekd.pipeline import BuildContext, StageResult


def student_ref(ctx: BuildContext, inputs: dict[str, StageResult]) -> Any:
    """The student the distill stage trains: the card's, with the search winner's kwargs when a search ran."""
    from edgekd.tasks.search_common import winner_kwargs

    kw = winner_kwargs(inputs)
    return ctx.recipe.student if kw is None else ctx.recipe.student.model_copy(update={"kwargs": kw})


def trained_student_ref(ctx: BuildContext, distill: StageResult) -> Any:
    """The student the distill stage trained (its architecture), for the stages that load student.pt."""
    kw = distill.metrics.get("student_kwargs")
    return ctx.recipe.student if kw is None else ctx.recipe.student.model_copy(update={"kwargs": kw})
