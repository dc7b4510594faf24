"""What the host can do: a measured FP32 peak (short sgemm calibration); its CPU via edgekd.hostinfo.

The INT8-vs-FP32 choice and every roofline depend on the host: an AVX-512 Xeon and an AVX2-only
EPYC differ by about 2x in peak GFLOP/s, so the peak of a host run is measured on that host, at
the profile's thread count, at profile time. Target-card peaks describe absent devices only.
"""
from __future__ import annotations

import time
from typing import Any

from edgekd.hostinfo import cpu_info, cpu_name  # noqa: F401 (re-exported: the host's CPU and flags)


def sgemm_peak(seconds: float = 0.5, sizes: tuple[int, ...] = (256, 512)) -> dict[str, Any]:
    """Best FP32 GEMM rate of this process's BLAS (numpy) in GFLOP/s, over `seconds`.

    Run it where the thread count is already pinned (the profile worker sets OMP/MKL/OPENBLAS
    threads in its environment before numpy loads). The best of many short calls on cache-resident
    matrices approaches the cores' FMA peak; it is a practical peak (what a tuned kernel reaches
    here), not the datasheet figure.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    mats = {n: (rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))
            for n in sizes}
    for a, b in mats.values():
        a @ b  # first call: thread pool start-up and page faults, not timed
    best: dict[int, float] = {n: 0.0 for n in sizes}
    calls = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or calls < 2 * len(sizes):
        for n, (a, b) in mats.items():
            t0 = time.perf_counter_ns()
            a @ b
            dt = (time.perf_counter_ns() - t0) / 1e9
            if dt > 0:
                best[n] = max(best[n], 2.0 * n ** 3 / dt / 1e9)
            calls += 1
    n_best = max(best, key=best.__getitem__)
    return {"peak_gflops": best[n_best], "method": "sgemm-calibration", "matrix": n_best, "calls": calls,
            "seconds": seconds, "blas": "numpy " + np.__version__}
