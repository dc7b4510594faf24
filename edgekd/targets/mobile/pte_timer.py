"""Time one .pte in a fresh process: `python -m edgekd.targets.mobile.pte_timer SPEC_JSON OUT_JSON`.

The student search (edgekd.tasks.classification.search) times each candidate's ExecuTorch program here, so
every measurement starts from a clean XNNPACK threadpool and allocator, as the profile stage's workers do."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import Field

from edgekd.config import Strict


class PteTimingSpec(Strict):
    path: str
    input_shape: list[int] = Field(min_length=1, description="batch 1 first")
    runs: int = Field(200, ge=1)
    warmup: int = Field(20, ge=0)
    threads: int = Field(1, ge=1)
    seed: int = 0


def main(argv: list[str]) -> int:
    import numpy as np

    from edgekd.profile.spec import load_spec
    from edgekd.targets.mobile.executorch import time_pte

    spec = load_spec(PteTimingSpec, Path(argv[0]).read_text())
    x = np.random.default_rng(spec.seed).standard_normal(spec.input_shape).astype(np.float32)
    res = time_pte(spec.path, x, runs=spec.runs, warmup=spec.warmup, threads=spec.threads)
    Path(argv[1]).write_text(json.dumps({"latency_ms": res}))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a worker process
    sys.exit(main(sys.argv[1:]))
