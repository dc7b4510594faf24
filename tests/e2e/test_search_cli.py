"""`edgekd build --latency-budget/--size-budget` on digits-mlp --quick: the search stage measures untrained
candidates on the target runtime, the distill stage trains the winner, a too-tight budget exits 2."""
from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import FAST_PROFILE, edgekd

SPACE = ("--set", "student.search.space.width_mult=[0.5,1,2]", "--set", "student.search.space.depth_mult=[1]",
         "--set", "student.search.top_k=2", "--set", "student.search.proxy_epochs=1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One EDGEKD_CACHE for the module: the digits teacher trains once."""
    return {"EDGEKD_CACHE": str(tmp_path_factory.mktemp("search-cache"))}


def test_budget_picks_a_fitting_student_and_distill_trains_it(tmp_path, cache):
    env = cache
    out = tmp_path / "b"
    r = edgekd("build", "--target", "cpu", "--recipe", "digits-mlp", "--quick", "--out", str(out), "-q",
               "--latency-budget", "50ms", "--size-budget", "16KiB", *SPACE, *FAST_PROFILE, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    search = json.loads((out / "search" / "result.json").read_text())["metrics"]
    rows = search["candidates"]
    assert len(rows) == 3 and all(row["latency_ms"] > 0 for row in rows)
    # a row fits exactly when its shipped variant is within 16 KiB; the winner is one of those
    assert [row["fits"] for row in rows] == [row["size_bytes"] <= 16 * 1024 for row in rows]
    assert search["winner"]["size_bytes"] <= 16 * 1024 and any(row["status"] == "winner" and row["fits"] for row in rows)
    distill = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    assert distill["student_kwargs"] == search["winner"]["kwargs"]
    assert distill["params"] == search["winner"]["params"]
    report = json.loads((out / "report" / "report.json").read_text())
    # the budget is checked again on the shipped artifact (the accuracy-aware quantizer may keep layers in FP32
    # that the untrained search quantized): met, or loud in the report, never silent
    final = report["search"]["final"]
    shipped = next(m for m in report["models"] if f"{m['role']}/{m['variant']}" == final["artifact"])
    assert final["checks"]["size_kib"]["measured"] == shipped["size_bytes"] / 1024
    assert final["met"] == (shipped["size_bytes"] <= 16 * 1024)
    sel = json.loads((out / "select" / "result.json").read_text())["metrics"]
    fitting = [c for c in sel["candidates"] if c["status"] in ("selected", "kept", "slower-than-fp32", "larger-than-fp32",
                                                              "within-noise-of-fp32") and c["size_bytes"] <= 16 * 1024]
    if fitting:  # the select stage honours the budget when a candidate within the accuracy budget fits it
        assert final["met"]
    else:
        assert any(n.startswith("BUDGET MISSED") for n in report["notes"]) and "device budget" in sel["warnings"][0]
    assert (out / "report" / "plots" / "search.png").is_file()


def test_too_tight_budget_exits_2_with_the_smallest_latency(tmp_path, cache):
    env = cache
    r = edgekd("build", "--target", "cpu", "--recipe", "digits-mlp", "--quick", "--out", str(tmp_path / "b"),
               "--latency-budget", "1ns", *SPACE, *FAST_PROFILE, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stdout + r.stderr
    assert "fits the budget" in err and "smallest measured latency" in err
