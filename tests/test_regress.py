"""The CI gate: accuracy/size per variant, missing variants, opt-in latency, baseline and history."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgekd.errors import GateFailed, UserError
from edgekd.regress import compare, gate_json, history, kd_gain_gate, render_gate, update_baseline
from edgekd.report.schema import load_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_fixture.json"


@pytest.fixture
def base() -> dict:
    return json.loads(FIXTURE.read_text())


def _model(r: dict, variant: str, role: str = "student") -> dict:
    return next(m for m in r["models"] if m["role"] == role and m["variant"] == variant)


def _breached(result) -> set[str]:
    return {row.metric for row in result.breaches}


def test_identical_reports_pass(base):
    res = compare(copy.deepcopy(base), base)
    assert res.passed and res.breaches == []
    metrics = {r.metric for r in res.rows}
    # The selected student and every variant are checked on accuracy and size.
    for name in ("selected", "fp32", "int8-dynamic", "int8-qdq"):
        assert {f"{name} accuracy", f"{name} size"} <= metrics
    assert "fp16 accuracy" not in metrics  # failed in the baseline: nothing to regress from
    assert not any("speedup" in m for m in metrics)  # latency is opt-in
    res.raise_if_failed()


def test_accuracy_drop_breaches_only_past_the_limit(base):
    now = copy.deepcopy(base)
    _model(now, "int8-dynamic")["accuracy"] = 0.8979 - 0.0059  # 0.59 points
    res = compare(now, base, max_accuracy_drop=0.5)
    assert not res.passed and _breached(res) == {"selected accuracy", "int8-dynamic accuracy"}
    row = next(r for r in res.rows if r.metric == "selected accuracy")
    assert row.delta == pytest.approx(-0.59) and row.limit == -0.5
    _model(now, "int8-dynamic")["accuracy"] = 0.8979 - 0.0044  # 0.44 points: within budget
    assert compare(now, base, max_accuracy_drop=0.5).passed
    _model(now, "int8-dynamic")["accuracy"] = None  # not measured any more
    assert "selected accuracy" in _breached(compare(now, base))


def test_size_growth_breaches_only_past_the_limit(base):
    now = copy.deepcopy(base)
    _model(now, "fp32")["size_bytes"] = int(214_536 * 1.06)
    res = compare(now, base, max_size_growth=0.05)
    assert _breached(res) == {"fp32 size"}
    assert next(r for r in res.rows if r.metric == "fp32 size").delta == pytest.approx(0.06, abs=1e-5)
    _model(now, "fp32")["size_bytes"] = int(214_536 * 1.04)
    assert compare(now, base, max_size_growth=0.05).passed


def test_missing_or_failed_variant_is_a_breach(base):
    now = copy.deepcopy(base)
    now["models"] = [m for m in now["models"] if m["variant"] != "int8-qdq"]
    now["candidates"] = [c for c in now["candidates"] if c["variant"] != "int8-qdq"]
    res = compare(now, base)
    assert _breached(res) == {"int8-qdq present"}
    with pytest.raises(GateFailed) as ei:
        res.raise_if_failed()
    assert ei.value.exit_code == 1 and "int8-qdq" in ei.value.message
    now["candidates"].append({"variant": "int8-qdq", "format": "onnx", "path": None, "accuracy": None,
                              "val_accuracy": None, "latency_ms": None, "size_bytes": None,
                              "status": "failed: calibration diverged"})
    row = next(r for r in compare(now, base).rows if r.metric == "int8-qdq present")
    assert row.verdict == "breach" and row.now == "failed: calibration diverged"


def test_other_recipe_or_target_is_a_user_error(base):
    for key, value in (("recipe", "digits-mlp"), ("target", "mobile")):
        now = copy.deepcopy(base)
        now[key] = value
        with pytest.raises(UserError, match=key) as ei:
            compare(now, base)
        assert ei.value.exit_code == 2


def test_latency_gate_is_opt_in_and_uses_speedup_vs_teacher(base):
    slower = copy.deepcopy(base)
    _model(slower, "int8-dynamic")["latency_ms"]["p50"] *= 1.3
    assert compare(slower, base).passed  # not gated unless asked
    res = compare(slower, base, max_latency_growth=0.10)
    assert _breached(res) == {"selected speedup vs teacher", "int8-dynamic speedup vs teacher"}
    row = next(r for r in res.rows if r.metric == "selected speedup vs teacher")
    assert row.delta == pytest.approx(0.3) and row.baseline == pytest.approx(2.41 / 0.171)
    # A machine twice as slow for every model: the speedup is unchanged, so the gate passes.
    other_machine = copy.deepcopy(base)
    for m in other_machine["models"]:
        m["latency_ms"]["p50"] *= 2.0
    assert compare(other_machine, base, max_latency_growth=0.10).passed


def test_kd_gain_floor_is_opt_in_and_absolute(base):
    base["comparison"]["kd_gain_points"] = 0.9
    now = copy.deepcopy(base)
    now["comparison"]["kd_gain_points"] = 0.3
    assert compare(now, base).passed  # not gated unless asked
    res = compare(now, base, min_kd_gain=0.5)
    assert _breached(res) == {"KD gain over labels-only control"}
    row = res.breaches[0]
    assert row.now == pytest.approx(0.3) and row.baseline == pytest.approx(0.9) and row.delta == pytest.approx(-0.6)
    # an absolute floor: a gain well below the baseline's still passes when it clears the floor
    assert compare(now, base, min_kd_gain=0.3).passed and compare(now, base, min_kd_gain=0.25).passed
    # a negative floor tolerates KD losing a little to the control, not more
    now["comparison"]["kd_gain_points"] = -0.2
    assert compare(now, base, min_kd_gain=-0.25).passed
    assert not compare(now, base, min_kd_gain=-0.1).passed
    # no control in the report: the gate cannot vouch for distillation, so it fails and says why
    del now["comparison"]["kd_gain_points"]
    res = kd_gain_gate(now, 0.0)
    assert not res.passed and "distill.control=true" in res.breaches[0].note
    now["comparison"]["kd_gain_points"] = 1.25
    assert kd_gain_gate(now, 0.5).passed
    from rich.console import Console

    con = Console(record=True, width=200, color_system=None)
    render_gate(kd_gain_gate(now, 0.5), con)
    text = con.export_text()
    assert "+1.25 pt" in text and "≥ +0.50 pt" in text and "gate passed" in text


def test_gate_json_and_render(base):
    now = copy.deepcopy(base)
    _model(now, "int8-dynamic")["size_bytes"] *= 2
    res = compare(now, base)
    data = gate_json(res)
    assert json.loads(json.dumps(data)) == data
    assert data["passed"] is False and data["breaches"] == 2
    assert {r["metric"] for r in data["rows"] if r["verdict"] == "breach"} == {"selected size", "int8-dynamic size"}
    from rich.console import Console

    con = Console(record=True, width=200, color_system=None)
    render_gate(res, con)
    text = con.export_text()
    assert "gate FAILED: 2 breach(es)" in text and "+100.0%" in text and "≤ +5.0%" in text


def test_update_baseline_round_trip(tmp_path, base):
    path = update_baseline(base, tmp_path / "ci" / "baseline.json")
    assert load_report(path) == base
    assert [p.name for p in path.parent.iterdir()] == ["baseline.json"]  # no temp file left behind


def test_history_plot(tmp_path, base):
    for i, (size, acc) in enumerate([(80_000, 0.893), (69_812, 0.8979)]):
        r = copy.deepcopy(base)
        r["created"] = f"2025-01-{10 + i:02d}T00:00:00+00:00"
        _model(r, "int8-dynamic").update(size_bytes=size, accuracy=acc)
        d = tmp_path / f"build{i}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(r))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{")
    with pytest.warns(UserWarning, match="skipping"):
        png = history(tmp_path)
    assert png == tmp_path / "history.png" and png.read_bytes().startswith(b"\x89PNG")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no usable report.json"):
        history(tmp_path / "empty")


def _as_text_generation(r: dict) -> dict:
    """The fixture as a language-model report: agreement in `accuracy`, generated tokens/s per row."""
    r = copy.deepcopy(r)
    r["task"] = "text-generation"
    for m in r["models"]:
        m["tokens_per_s"] = 1000.0 / m["latency_ms"]["p50"]
        m["agreement"] = m["accuracy"]
    return r


def test_text_generation_reports_are_gated_on_agreement_and_tokens_per_s(base):
    lm = _as_text_generation(base)
    res = compare(copy.deepcopy(lm), lm, max_latency_growth=0.2)
    assert res.passed
    metrics = {r.metric for r in res.rows}
    assert {"selected next-token agreement", "selected tokens/s vs teacher", "fp32 tokens/s vs teacher"} <= metrics
    assert not any(m.endswith(" accuracy") or "speedup" in m for m in metrics)

    now = copy.deepcopy(lm)
    _model(now, "int8-dynamic")["accuracy"] -= 0.01  # one point of agreement lost
    assert "selected next-token agreement" in _breached(compare(now, lm))

    # the whole machine is twice as slow (teacher too): tokens/s relative to the teacher is unchanged
    slower = copy.deepcopy(lm)
    for m in slower["models"]:
        m["tokens_per_s"] /= 2
    assert compare(slower, lm, max_latency_growth=0.2).passed
    # the student alone lost half its tokens/s: a breach, named as tokens/s
    worse = copy.deepcopy(lm)
    _model(worse, "int8-dynamic")["tokens_per_s"] /= 2
    res = compare(worse, lm, max_latency_growth=0.2)
    assert "selected tokens/s vs teacher" in _breached(res)
    assert "slower relative to the teacher" in res.breaches[0].note
