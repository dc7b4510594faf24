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


def host_cpu() -> str:
    """This host's CPU model, as edgekd's own reports name it (edgekd.hostinfo)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from edgekd.hostinfo import cpu_name

    return cpu_name()


def compute_device() -> str:
    """Where edgekd's training and teacher generation run on this host (edgekd.llm.parallel.train_device): the GPU's
    name on a CUDA host, else "cpu"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


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


def search_again(src: Path, section: dict, env: dict | None = None, cwd: Path | None = None) -> dict:
    """The search stage of a finished build with a budget, run again alone (`edgekd search`) with this checkout's code
    on a copy (SRC-again): its seconds against the same rest of the build (`section["search_cost"]`), how many
    architectures it timed, its table and winner. Stored in `section["search_again"]`; the section's search-cost goal
    is judged on it."""
    import shutil

    dst = src.with_name(src.name + "-again")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    load0 = os.getloadavg()[0]
    wall, _ = edgekd("search", str(dst), "--quiet", env=env, cwd=cwd)
    m = json.loads((dst / "search" / "result.json").read_text())["metrics"]
    before = json.loads((src / "search" / "result.json").read_text())["metrics"]
    secs = next(s["seconds"] for s in json.loads((dst / "run.json").read_text())["stages"] if s["stage"] == "search")
    again = {"command": f"edgekd search {dst.name} (a copy of {src.name})", "wall_s": round(wall, 1), "search_stage_s": secs,
             "timed": m["timed"], "candidates": len(m["candidates"]), "timed_before": before.get("timed"),
             "winner": m["winner"]["kwargs"], "same_winner": m["winner"]["kwargs"] == before["winner"]["kwargs"],
             "why": m["why"], "host_load_1min_before": round(load0, 2), "proxy_seconds": m.get("proxy_seconds"),
             "fraction_of_student_build": secs / section["search_cost"]["rest_of_build_s"],
             "candidates_table": [{k: c.get(k) for k in ("kwargs", "params", "latency_ms", "fits", "status",
                                                          "proxy_val_accuracy", "proxy_val_perplexity",
                                                          "cut_val_accuracy", "cut_val_perplexity", "proxy_seconds",
                                                          "skipped")}
                                  for c in m["candidates"]],
             "note": "the build's own search stage, timed again alone with the current search code"}
    section["search_again"] = again
    if "goals_met" in section:
        section["goals_met"]["search_cost"] = again["fraction_of_student_build"] <= 0.25
    return again


def rerun_search_into(results: Path, key: list[str], src: Path, env: dict | None = None, cwd: Path | None = None) -> None:
    """search_again on SRC, stored in the results file's section at `key` (a path of dict keys; [] the top)."""
    d = json.loads(results.read_text())
    section = d
    for k in key:
        section = section[k]
    again = search_again(src, section, env, cwd)
    results.write_text(json.dumps(d, indent=2))
    print(json.dumps({k: v for k, v in again.items() if k != "candidates_table"}, indent=2))
