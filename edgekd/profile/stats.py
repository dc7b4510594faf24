"""Summary statistics of latency samples."""
from __future__ import annotations

import math
from collections.abc import Sequence

from edgekd.errors import StageError


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Percentile `q` in [0, 100] of already sorted samples, by linear interpolation between the
    closest ranks (numpy's default method), so figures match `np.percentile` exactly."""
    n = len(sorted_samples)
    if n == 0:
        raise StageError("percentile of no samples", hint="the timing loop recorded nothing")
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * frac)


def summarize(samples_ms: Sequence[float]) -> dict:
    """min, p50, p90, p99, mean, std (population) and n of latency samples in milliseconds."""
    if len(samples_ms) == 0:
        raise StageError("no latency samples to summarize", hint="the timing loop recorded nothing; check max_seconds")
    s = sorted(float(x) for x in samples_ms)
    n = len(s)
    mean = math.fsum(s) / n
    var = math.fsum((x - mean) ** 2 for x in s) / n
    return {
        "min": s[0],
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "mean": mean,
        "std": math.sqrt(var),
        "n": n,
    }
