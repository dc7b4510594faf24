"""run.json's model (edgekd.lineage) and load_run: a malformed lineage is refused (exit 2) with the
field named, the way load_run always said it."""
from __future__ import annotations

import json

import pytest

from edgekd.errors import UserError
from edgekd.lineage import run_problem
from edgekd.pipeline import load_run

GOOD = {"schema_version": 1, "recipe": "digits-mlp", "target": "cpu", "overrides": {"distill.epochs": 1},
        "options": {"strict": True}, "quick": True, "status": "ok",
        "stages": [{"stage": "teacher", "key": "k1", "reused": False}, {"stage": "distill", "reused": True}]}


@pytest.mark.parametrize("change, problem", [
    (lambda r: r.pop("recipe"), "'recipe' must be a string"),
    (lambda r: r.update(recipe=3), "'recipe' must be a string"),
    (lambda r: r.update(target=None), "'target' must be a string"),
    (lambda r: r.update(overrides=["a=1"]), "'overrides' must be an object"),
    (lambda r: r.update(options="strict"), "'options' must be an object"),
    (lambda r: r.update(stages={"teacher": {}}), "'stages' must be a list"),
    (lambda r: r["stages"].append({"key": "k"}), "stages[2] has no stage name"),
    (lambda r: r["stages"].insert(0, "teacher"), "stages[0] has no stage name"),
    (lambda r: r["stages"][1].update(stage=7), "stages[1] has no stage name"),
])
def test_each_rule_names_the_field(change, problem):
    run = json.loads(json.dumps(GOOD))
    change(run)
    assert run_problem(run) == problem


def test_first_problem_in_field_order():
    assert run_problem({"recipe": 1, "target": 2}) == "'recipe' must be a string"
    assert run_problem({"recipe": "r", "target": "t", "overrides": 1, "stages": 2}) == "'overrides' must be an object"
    assert run_problem([1, 2]) == "expected an object, found list"


def test_minimal_and_extra_keys_are_fine():
    assert run_problem(GOOD) is None
    assert run_problem({"recipe": "r", "target": "t"}) is None  # older run.json: no lineage yet


def test_load_run_refuses_malformed_and_fills_stages(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"recipe": "r", "target": "t", "future": {"x": 1}}))
    run = load_run(tmp_path)
    assert run["stages"] == [] and run["future"] == {"x": 1}  # returned as written, plus an empty lineage
    bad = {**GOOD, "stages": [{"reused": True}]}
    (tmp_path / "run.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"run.json is malformed: stages\[0\] has no stage name") as e:
        load_run(tmp_path)
    assert e.value.exit_code == 2 and "rebuild" in e.value.hint
