"""Profiling: latency/throughput/memory in a fresh worker process, energy (measured or a labelled
estimate), FLOPs and the roofline. Heavy runtimes are imported only inside the worker."""
from __future__ import annotations

from edgekd.profile.stats import summarize

__all__ = ["summarize"]
