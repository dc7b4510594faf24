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


def edgekd(*args: str, env: dict | None = None, check: bool = True, cwd: Path | None = None
           ) -> tuple[float, subprocess.CompletedProcess]:
    """`edgekd ARGS` with this checkout's edgekd, from the repository (or `cwd`: a user's folder its card is in)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                       env={**os.environ, **(env or {}),
                            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
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


def search_again(src: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """The search stage of a finished build with a budget, run again alone (`edgekd search`) with this checkout's code
    on a copy (SRC-again): its seconds, how many architectures it timed, and its winner."""
    import shutil

    dst = src.with_name(src.name + "-again")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    load0 = os.getloadavg()[0]
    wall, _ = edgekd("search", str(dst), "--quiet", env=env, cwd=cwd)
    m = json.loads((dst / "search" / "result.json").read_text())["metrics"]
    before = json.loads((src / "search" / "result.json").read_text())["metrics"]
    secs = next(s["seconds"] for s in json.loads((dst / "run.json").read_text())["stages"] if s["stage"] == "search")
    return {"command": f"edgekd search {dst.name} (a copy of {src.name})", "wall_s": round(wall, 1), "search_stage_s": secs,
            "timed": m["timed"], "candidates": len(m["candidates"]), "timed_before": before.get("timed"),
            "winner": m["winner"]["kwargs"], "same_winner": m["winner"]["kwargs"] == before["winner"]["kwargs"],
            "host_load_1min_before": round(load0, 2),
            "note": "the build's own search stage, timed again alone with the current search code"}
