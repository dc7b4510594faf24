"""Resident memory of this process: now, and its peak (the VmHWM reader: exec resets it, so a worker
never reports its parent's peak)."""
from __future__ import annotations

import sys


def current_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int:
    """Peak resident set of this process in bytes.

    On Linux this is VmHWM from /proc/self/status: the high-water mark of the current address
    space, which exec resets. ru_maxrss is NOT usable there: it survives fork+exec, so a worker
    spawned by a 500 MiB parent would report the parent's peak. Elsewhere: ru_maxrss / psutil.
    """
    import psutil

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = 0
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024
    except ImportError:  # Windows has no `resource`
        peak = 0
    info = psutil.Process().memory_info()
    return max(peak, int(getattr(info, "peak_wset", 0)), int(info.rss))
