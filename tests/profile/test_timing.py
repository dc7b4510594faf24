"""The timing loop in edgekd.profile.measure.timing: its stop rules and what it reports."""
from __future__ import annotations

import time

from edgekd.profile.measure.timing import timed_calls


def test_stops_after_min_runs_when_min_seconds_is_met():
    seen: list[int] = []
    samples, wall, cpu = timed_calls(seen.append, [1, 2, 3], min_runs=7, min_s=0.0, max_s=10.0)
    assert len(samples) == 7
    assert seen == [1, 2, 3, 1, 2, 3, 1]  # the inputs are cycled in order
    assert all(s >= 0 for s in samples)
    assert wall >= sum(samples) / 1e3 * 0.99 and cpu >= 0


def test_keeps_running_until_min_seconds():
    samples, wall, _ = timed_calls(lambda x: time.sleep(0.005), [None], min_runs=1, min_s=0.05, max_s=10.0)
    assert wall >= 0.05
    assert len(samples) >= 5  # 0.05 s of 5 ms calls, at least
    assert min(samples) >= 5.0  # each latency (ms) covers the sleep


def test_max_seconds_cuts_a_slow_model_short_of_min_runs():
    samples, wall, _ = timed_calls(lambda x: time.sleep(0.02), [None], min_runs=1000, min_s=0.0, max_s=0.1)
    assert 1 <= len(samples) < 1000
    assert wall < 1.0  # stopped near max_s, not after 1000 calls (20 s)
