"""`edgekd build --latency-budget/--size-budget` on digits-mlp --quick: the search stage measures untrained
candidates on the target runtime, the distill stage trains the winner, a too-tight budget exits 2."""
from __future__ import annotations

import json

from tests.e2e.conftest import FAST_PROFILE, edgekd

SPACE = ("--set", "student.search.space.width_mult=[0.5,1,2]", "--set", "student.search.space.depth_mult=[1]",
         "--set", "student.search.top_k=2", "--set", "student.search.proxy_epochs=1")


def test_budget_picks_a_fitting_student_and_distill_trains_it(tmp_path):
    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
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
    assert report["search"]["final"]["checks"]["size_kib"]["measured"] <= 16
    assert (out / "report" / "plots" / "search.png").is_file()


def test_too_tight_budget_exits_2_with_the_smallest_latency(tmp_path):
    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
    r = edgekd("build", "--target", "cpu", "--recipe", "digits-mlp", "--quick", "--out", str(tmp_path / "b"),
               "--latency-budget", "1ns", *SPACE, *FAST_PROFILE, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stdout + r.stderr
    assert "fits the budget" in err and "smallest measured latency" in err
