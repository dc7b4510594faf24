"""What the host is: one CPU-info reader and a measured FP32 peak (short sgemm calibration).

The INT8-vs-FP32 choice and every roofline depend on the host: an AVX-512 Xeon and an AVX2-only
EPYC differ by about 2x in peak GFLOP/s, so the peak of a host run is measured on that host, at
the profile's thread count, at profile time. Target-card peaks describe absent devices only.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

# /proc/cpuinfo flag names; "amx" is reported when the tile unit (amx_tile) is present.
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """{"model", "arch", "logical_cpus", "flags": {avx2, avx512f, avx512_vnni, amx, ...}}.

    `cpuinfo_text` is for tests (a recorded /proc/cpuinfo); by default the host's is read. Off Linux
    the flags are unknown (None), never guessed.
    """
    text = cpuinfo_text
    if text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    info: dict[str, Any] = {"model": model or platform.processor() or platform.machine(),
                            "arch": platform.machine(), "logical_cpus": os.cpu_count()}
    if flags is None:
        info["flags"] = {name: None for name in ("avx2", "avx512f", "avx512_vnni", "amx")}
    else:
        info["flags"] = {name: name in flags for name in _FLAGS if name != "amx_tile"}
        info["flags"]["amx"] = "amx_tile" in flags
    return info


def cpu_name() -> str:
    return str(cpu_info()["model"])


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
