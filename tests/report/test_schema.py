"""report.json's pydantic models and the JSON Schema they publish: one test per rule (a bad report
is refused with a message naming the field), the committed schema file kept in step with the models,
`edgekd report --schema`, and the text-generation per-token fields."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgekd.report.schema import (REQUIRED_KEYS, Report, check_report, energy_is_valid, report_json_schema,
                                  report_schema_text)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "report_fixture.json"
SCHEMA_FILE = ROOT / "edgekd" / "report" / "report.schema.json"
REGENERATE = "python -m edgekd report --schema > edgekd/report/report.schema.json"


@pytest.fixture
def report() -> dict:
    return json.loads(FIXTURE.read_text())


def _stats(p50: float | None = 1.0) -> dict:
    return {"p50": p50, "p90": 1.2, "p99": 1.5, "mean": 1.05, "n": 40}


# (breakage, the field the first problem must name, a phrase of its message)
RULES = [
    (lambda r: r.pop("created"), "report", "missing 'created'"),
    (lambda r: r.update(schema_version=2), "schema_version", "2, expected 1"),
    (lambda r: r.update(schema_version=True), "schema_version", "expected an integer"),
    (lambda r: r.update(edgekd_version=1.0), "edgekd_version", "expected a string"),
    (lambda r: r["environment"].pop("cpu"), "environment", "missing 'cpu'"),
    (lambda r: r["environment"].update(threads="1"), "environment.threads", "expected an integer"),
    (lambda r: r["environment"].update(runtimes=["onnxruntime"]), "environment.runtimes", "expected an object"),
    (lambda r: r.update(models={}), "models", "expected a list"),
    (lambda r: r.update(models=[]), "models", "non-empty list"),
    (lambda r: r["models"].append("student/fp64"), "models[4]", "expected an object"),
    (lambda r: r["models"][1].pop("runtime"), "models[1]", "missing 'runtime'"),
    (lambda r: r["models"][0].update(role="coach"), "models[0].role", "'teacher' or 'student'"),
    (lambda r: r["models"][0].update(params=-3), "models[0].params", ">= 0"),
    (lambda r: r["models"][0].update(size_bytes="4 MB"), "models[0].size_bytes", "expected a number"),
    (lambda r: r["models"][0].update(peak_rss_bytes=True), "models[0].peak_rss_bytes", "expected a number"),
    (lambda r: r["models"][2].update(accuracy=89.79), "models[2].accuracy", "fraction in [0, 1]"),
    (lambda r: r["models"][2].update(accuracy=float("nan")), "models[2].accuracy", "finite"),
    (lambda r: r["models"][1].update(throughput_per_s=float("inf")), "models[1].throughput_per_s", "finite"),
    (lambda r: r["models"][1].update(latency_ms=[0.2]), "models[1].latency_ms", "expected an object"),
    (lambda r: r["models"][1]["latency_ms"].pop("p99"), "models[1].latency_ms", "missing 'p99'"),
    (lambda r: r["models"][1]["latency_ms"].update(p90=-0.1), "models[1].latency_ms.p90", ">= 0"),
    (lambda r: r["models"][1]["latency_ms"].update(p50=None), "models[1].latency_ms.p50", "a measured row needs a p50"),
    (lambda r: r["models"][1].update(measured_on="cloud", device="x"), "models[1].measured_on", "'device', 'host' or 'estimate'"),
    (lambda r: r["models"][1].update(measured_on=None), "models[1].measured_on", "'device', 'host' or 'estimate'"),
    (lambda r: r["models"][1].update(measured_on="device"), "models[1].device", "needs the device's name"),
    (lambda r: r["models"][1].update(measured_on="device", device=""), "models[1].device", "needs the device's name"),
    (lambda r: r["models"][0].pop("energy"), "models[0]", "missing 'energy'"),
    (lambda r: r["models"][0]["energy"].update(method="measured"), "models[0].energy.method", "neither measured"),
    (lambda r: r["models"][0]["energy"].update(method="estimate-"), "models[0].energy.method", "neither measured"),
    (lambda r: r["models"][0]["energy"].pop("joules_per_inference"), "models[0].energy", "missing 'joules_per_inference'"),
    (lambda r: r["models"][0].update(ttft_ms=12.0), "models[0].ttft_ms", "expected an object"),
    (lambda r: r["models"][0].update(tokens_per_s=-1), "models[0].tokens_per_s", ">= 0"),
    (lambda r: r["models"][0].update(joules_per_token="n/a"), "models[0].joules_per_token", "expected a number"),
    (lambda r: r["models"][0].update(agreement=1.2), "models[0].agreement", "fraction in [0, 1]"),
    (lambda r: r["models"][0].update(agreement={"natural": 1.2}), "models[0].agreement.natural", "fraction in [0, 1]"),
    (lambda r: r["models"][0].update(perplexity=0.9), "models[0].perplexity", ">= 1"),
    (lambda r: r.update(models=[m for m in r["models"] if m["role"] != "teacher"]), "models", "no teacher entry"),
    (lambda r: r.update(models=[m for m in r["models"] if m["role"] != "student"], selected="teacher/fp32"),
     "models", "no student entry"),
    (lambda r: r.update(selected="int8-dynamic"), "selected", "'<role>/<variant>'"),
    (lambda r: r.update(selected="student/int4"), "selected", "not among models"),
    (lambda r: r["comparison"].pop("energy_ratio"), "comparison", "missing 'energy_ratio'"),
    (lambda r: r["comparison"].update(speedup_p50="14x"), "comparison.speedup_p50", "expected a number"),
    (lambda r: r["comparison"].update(kd_gain_points="a lot"), "comparison.kd_gain_points", "expected a number"),
    (lambda r: r.update(training={"control": []}), "training.control", "expected an object"),
    (lambda r: r.update(training={"control": {"accuracy": 89.2}}), "training.control.accuracy", "fraction in [0, 1]"),
    (lambda r: r.update(candidates={}), "candidates", "expected a list"),
    (lambda r: r["candidates"][1].pop("val_accuracy"), "candidates[1]", "missing 'val_accuracy'"),
    (lambda r: r["candidates"][0].update(status="great"), "candidates[0].status", "failed: <reason>"),
    (lambda r: r["candidates"][0].update(accuracy=2), "candidates[0].accuracy", "fraction in [0, 1]"),
]


@pytest.mark.parametrize("breakage, field, phrase", RULES)
def test_each_rule_refuses_a_bad_report_naming_the_field(report, breakage, field, phrase):
    assert check_report(report) == []
    breakage(report)
    problems = check_report(report)
    assert problems, "the broken report was accepted"
    assert problems[0].startswith(f"{field}: ") and phrase in problems[0], problems


def test_problems_are_one_per_field_and_all_reported(report):
    report["comparison"]["kd_gain_points"] = "a lot"
    report["models"][0]["latency_ms"].pop("n")
    report["candidates"][2]["status"] = "meh"
    assert sorted(p.split(":")[0] for p in check_report(report)) == [
        "candidates[2].status", "comparison.kd_gain_points", "models[0].latency_ms"]


def test_what_the_contract_allows(report):
    """Extra keys anywhere, nulls where a figure does not exist, estimates without a p50, failed statuses
    with any reason, and the fixture's keys as REQUIRED_KEYS lists them."""
    r = copy.deepcopy(report)
    r["future_section"] = {"anything": [1, "x"]}
    r["environment"]["runtimes"]["openvino"] = None
    m = r["models"][1]
    m.update(measured_on="estimate", device="Ascend 310B", params=None, accuracy=None, throughput_per_s=None,
             extra_figure={"a": 1})
    m["latency_ms"].update(p50=None, p90=None, n=None)
    m["energy"].update(joules_per_inference=None, method="estimate-roofline")
    r["models"][2].update(measured_on="device", device="Pixel 8", ms_per_token=_stats())
    r["candidates"][3]["status"] = "failed: Conv kernel missing\nsecond line of the error"
    r["comparison"].update(speedup_p50=None, kd_gain_points=None)
    r["training"] = {"control": None, "student": {"val_accuracy": 0.9}}
    assert check_report(r) == []
    for kind, keys in REQUIRED_KEYS.items():
        assert keys, kind
    assert REQUIRED_KEYS["latency_ms"] == ("p50", "p90", "p99", "mean", "n")
    assert set(REQUIRED_KEYS["model"]) <= set(report["models"][0])


def test_text_generation_rows_as_the_builder_emits_them_and_per_set_figures(report):
    """The text-generation builder writes ttft_ms as latency stats, tokens_per_s and perplexity as numbers;
    agreement and perplexity may be one figure per evaluation set."""
    r = copy.deepcopy(report)
    r["models"][0].update(ttft_ms=_stats(12.5), tokens_per_s=197.0, perplexity=4.4, agreement=1.0)
    r["models"][1].update(ms_per_token=_stats(5.1), joules_per_token=0.002, perplexity={"in-template": 3.1, "natural": None},
                          agreement={"in-template": 0.52, "held-out": 0.486, "natural": 0.31, "natural-text": None})
    assert check_report(r) == []
    row = Report.model_validate(r).models[1]
    assert row.agreement == {"in-template": 0.52, "held-out": 0.486, "natural": 0.31, "natural-text": None}
    assert row.ms_per_token is not None and row.ms_per_token.p50 == 5.1


def test_validation_leaves_the_report_as_written(report):
    before = copy.deepcopy(report)
    assert check_report(report) == []
    assert report == before and isinstance(report["models"][0]["latency_ms"]["n"], int)


def test_energy_labels():
    assert all(energy_is_valid(m) for m in ("rapl", "nvml", "npu-smi", "estimate-cpu-time-x-power"))
    assert not any(energy_is_valid(m) for m in ("measured", "estimate-", "RAPL", None, 3, "rapl-ish"))


def test_fixture_validates_against_the_models(report):
    model = Report.model_validate(report)
    assert {m.role for m in model.models} == {"teacher", "student"} and model.selected == report["selected"]


def test_committed_schema_is_what_the_models_emit():
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == report_json_schema(), (
        f"{SCHEMA_FILE.relative_to(ROOT)} is out of date with edgekd/report/schema.py; regenerate it: {REGENERATE}")
    assert SCHEMA_FILE.read_text(encoding="utf-8") == report_schema_text(), f"formatting differs; regenerate: {REGENERATE}"


def test_schema_states_the_contract():
    s = report_json_schema()
    assert s["$schema"].endswith("2020-12/schema") and s["additionalProperties"] is True
    assert set(s["required"]) == set(REQUIRED_KEYS["report"])
    row = s["$defs"]["ModelRow"]
    assert set(row["required"]) == set(REQUIRED_KEYS["model"]) and row["additionalProperties"] is True
    assert row["properties"]["measured_on"]["enum"] == ["device", "host", "estimate"]
    assert row["properties"]["role"]["enum"] == ["teacher", "student"]
    for opt in ("ttft_ms", "ms_per_token", "tokens_per_s", "joules_per_token", "agreement", "perplexity"):
        assert opt in row["properties"] and opt not in row["required"]
    assert s["$defs"]["Energy"]["properties"]["method"]["pattern"] == "^(rapl|nvml|npu-smi|estimate-.+)$"


def test_schema_file_ships_in_the_wheel():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edgekd"]
    rel = SCHEMA_FILE.relative_to(ROOT / "edgekd").as_posix()
    assert any(fnmatch.fnmatch(rel, pat) for pat in data), f"{rel} is not in pyproject's package-data for edgekd"


def test_cli_prints_the_schema_without_a_build_dir(tmp_path):
    # from an empty folder, with this checkout first on the path (not whichever edgekd is installed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}

    def edgekd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=120)

    r = edgekd("report", "--schema")
    assert r.returncode == 0, r.stderr
    assert r.stdout == SCHEMA_FILE.read_text(encoding="utf-8")
    r = edgekd("report")
    assert r.returncode == 2 and "BUILD_DIR" in r.stderr and "--schema" in r.stderr and "Traceback" not in r.stderr


def test_a_json_schema_validator_agrees_with_the_models(report):
    """What a CI user gets from the published file: the fixture passes, and each broken report the models
    refuse is refused by the schema too (except `selected` naming a row, which JSON Schema cannot say)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(report)) == []
    for breakage, field, _ in RULES:
        r = copy.deepcopy(report)
        breakage(r)
        if field == "selected" and "/" in str(r["selected"]) or not json_safe(r):
            continue
        assert list(validator.iter_errors(r)), f"the schema accepts a report the models refuse at {field}"


def json_safe(r: dict) -> bool:
    try:
        json.dumps(r, allow_nan=False)
    except ValueError:
        return False  # NaN/inf have no JSON form: a JSON file cannot carry them
    return True
