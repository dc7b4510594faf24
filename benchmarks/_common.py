"""Shared helpers for benchmark scripts: run the CLI, time it, write JSON results."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def edgekd(*args: str, env: dict | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, cwd=ROOT)
    dt = time.perf_counter() - t0
    if check and r.returncode != 0:
        raise SystemExit(f"edgekd {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dt, r


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "host": platform.node(), "cpu_count": os.cpu_count(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return p


def report(build: Path) -> dict:
    return json.loads((build / "report" / "report.json").read_text())


def student(rep: dict, variant: str) -> dict:
    return next(m for m in rep["models"] if m["role"] == "student" and m["variant"] == variant)
