"""run.json, the lineage of a build (written by `edgekd.pipeline`), as a pydantic model.

Only what a reader relies on is typed: the recipe and target to rebuild with, the overrides and
options to pass again, and a stage name per lineage entry. Other keys (started, status, ...) are
kept as they are. Beside fsio/config in the layers: pipeline imports it, it imports no domain code.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StageEntry(_Open):
    stage: str


class RunRecord(_Open):
    """The keys of run.json that `edgekd quantize|report|profile DIR` read back."""

    recipe: str
    target: str
    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    stages: list[StageEntry] = []


# what each field must be, in the words load_run has always used
_MUST = {"recipe": "must be a string", "target": "must be a string", "overrides": "must be an object",
         "options": "must be an object", "stages": "must be a list"}


def run_problem(run: Any) -> str | None:
    """The first thing wrong with a parsed run.json, in one phrase; None when it is usable."""
    if not isinstance(run, dict):
        return f"expected an object, found {type(run).__name__}"
    try:
        RunRecord.model_validate(run)
    except ValidationError as e:
        loc = e.errors(include_url=False)[0]["loc"]  # fields are declared in the order they are reported
        if loc[0] == "stages" and len(loc) > 1:
            return f"stages[{loc[1]}] has no stage name"
        return f"'{loc[0]}' {_MUST.get(str(loc[0]), 'is invalid')}"
    return None
