"""benchmarks/bench_lm_curve.py's reading of a curve: how many answers a goal would take (`reach`)."""
import math

import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def curve():
    return benchmark_script("bench_lm_curve")


def _pts(f, ns):
    return [{"train_prompts": n, "y": f(n)} for n in ns]


def test_a_log_shaped_curve_is_read_off_its_fit_and_its_last_two_points(curve):
    pts = _pts(lambda n: 0.1 + 0.05 * math.log(n), [100, 200, 400, 800])
    r = curve.reach(pts, "y", 0.55)
    assert r["log_fit_answers"] == round(math.exp(9))  # 0.1 + 0.05 ln N = 0.55
    assert r["log_fit"]["points_per_doubling"] == pytest.approx(5 * math.log(2))
    step = (pts[-1]["y"] - pts[-2]["y"]) / 400  # the line through the last two points: fewer answers than the fit
    assert r["linear_last_two_answers"] == round(800 + (0.55 - pts[-1]["y"]) / step)
    assert r["linear_last_two_answers"] < r["log_fit_answers"]


def test_a_flat_curve_reaches_nothing_and_a_goal_already_met_is_the_last_point(curve):
    flat = curve.reach(_pts(lambda n: 0.3, [100, 200, 400]), "y", 0.55)
    assert flat["log_fit_answers"] is None and flat["linear_last_two_answers"] is None
    met = curve.reach(_pts(lambda n: 0.5 + 0.05 * math.log(n), [100, 200]), "y", 0.55)
    assert met["log_fit_answers"] == 200 and met["linear_last_two_answers"] == 200
