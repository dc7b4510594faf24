"""The timing loop: per-call latencies of a callable, with the wall and CPU time they took.

Low-level measuring (stdlib only): the profile worker and anything else that times a model call it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed_calls(fn: Callable[[Any], Any], inputs: list, min_runs: int, min_s: float,
                max_s: float) -> tuple[list[float], float, float]:
    """Per-call latencies in ms until (>= min_runs and >= min_s) or max_s; also wall and CPU seconds."""
    samples: list[float] = []
    n_in = len(inputs)
    cpu0 = time.process_time()
    start = time.perf_counter_ns()
    max_ns, min_ns = int(max_s * 1e9), int(min_s * 1e9)
    i = 0
    while True:
        x = inputs[i % n_in]
        t0 = time.perf_counter_ns()
        fn(x)
        t1 = time.perf_counter_ns()
        samples.append((t1 - t0) / 1e6)
        i += 1
        elapsed = t1 - start
        if (i >= min_runs and elapsed >= min_ns) or elapsed >= max_ns:
            break
    wall = (time.perf_counter_ns() - start) / 1e9
    return samples, wall, time.process_time() - cpu0
