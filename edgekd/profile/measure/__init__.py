"""Low-level measuring: timing statistics (stats), energy samplers and readers (energy), resident memory
(memory), FLOPs and rooflines (flops), the host's measured peak (host), the per-call timing loop (timing).

This package is a lower layer than `edgekd.runtimes` and `edgekd.export`: runtimes, converters and
targets use it, so it must import nothing from them (tests/test_layering.py holds it to that).
"""
