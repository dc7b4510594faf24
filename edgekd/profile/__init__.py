"""Profiling, in two layers.

`edgekd.profile.measure` (low: imports nothing above data/config/errors): timing statistics, energy
samplers and readers, resident-memory readers, FLOP counts and rooflines, the host's sgemm peak.
`edgekd.profile` itself (runner, worker, spec, standalone) is the orchestration that sits ABOVE
`edgekd.runtimes`: the worker loads a model through the one session factory (`runtimes.ort`) or the
zoo, times it with `measure`, in a fresh process per model and repeat. Heavy runtimes are imported
only inside the worker.
"""
