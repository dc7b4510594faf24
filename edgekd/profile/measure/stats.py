"""Summary statistics of latency samples."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekd.errors import StageError


def summarize(samples_ms: Sequence[float]) -> dict:
    """min, p50, p90, p99 (numpy's linear interpolation), mean, std (population) and n of latency
    samples in milliseconds."""
    if len(samples_ms) == 0:
        raise StageError("no latency samples to summarize", hint="the timing loop recorded nothing; check max_seconds")
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"min": float(s.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(s.mean()), "std": float(s.std()), "n": int(s.size)}
