"""Does per-token difficulty weighting help the language-model student? The smollm2-seqkd card with
`distill.weighting` off and on (each answer token's soft-label term weighted from the teacher's cached top-k at that
token), the same seed in both arms, for each seed; writes benchmarks/results/lm_weighting.json.

    python benchmarks/bench_lm_weighting.py                       # teacher_confidence vs none, seeds 0 1, 1 epoch
    python benchmarks/bench_lm_weighting.py --parallel 2          # two builds at a time (one thread each)
    python benchmarks/bench_lm_weighting.py --collect             # build nothing: read the folders of an earlier run

Builds: the card as shipped (the grown prompt set, general text) with distill.epochs=--epochs, fp32 only, no control
arm, no quantized teacher, one profile repeat. Per build, from distill/result.json and natural/result.json: held-out
template (test), in-template and validation agreement with 95% bootstrap intervals, natural-prompt agreement and the
natural-text perplexity ratio. Per seed: the weighted arm minus the unweighted one, in points.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, edgekd, host_cpu, write

WORK = Path(os.environ.get("EDGEKD_BENCH_WORK", ROOT / "builds")) / "bench-lm-weighting"
COMMON = ["--target", "cpu", "--recipe", "smollm2-seqkd", "--quiet", "--set", "generate.control=false",
          "--set", "quantize.candidates=[fp32]", "--set", "quantize.accuracy_aware=false",
          "--set", "evaluate.quantized_teacher=[]", "--set", "generate.profile_repeats=1"]
SETS = ("val", "test", "test_in_template")


def read_build(out: Path) -> dict:
    d = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    nat = json.loads((out / "natural" / "result.json").read_text())["metrics"]
    rep = json.loads((out / "report" / "report.json").read_text())
    nt = rep["training"].get("natural_text") or {}
    return {"out": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
            "losses": d["losses"], "train_seconds": d["train_seconds"], "best_epoch": d["best_epoch"],
            "sets": {k: {"agreement": d["held_out"][k]["agreement"], "ci95": d["held_out"][k]["agreement_ci95"],
                         "prompts": d["held_out"][k]["prompts"]} for k in SETS},
            "natural_prompts": nat["student"]["agreement"],
            "natural_text_perplexity_ratio": nt.get("perplexity_ratio")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="teacher_confidence", help="the weighting scheme of the weighted arm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1, help="builds at a time")
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    t0 = time.perf_counter()
    arms = {"none": [], args.kind: ["--set", f"distill.weighting={{kind: {args.kind}}}"]}
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]
    cmds = {(arm, seed): ["build", *COMMON, "--out", str(WORK / f"{arm}-seed{seed}"), "--set",
                          f"distill.epochs={args.epochs}", "--set", f"distill.seed={seed}", *arms[arm]]
            for arm, seed in jobs}

    def run(job) -> tuple[float, float]:
        load0 = os.getloadavg()[0]
        wall, r = edgekd(*cmds[job], env={"OMP_NUM_THREADS": str(args.threads)}, check=False)
        if r.returncode != 0:
            raise SystemExit(f"edgekd {' '.join(cmds[job])} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        print(f"  {job[0]} seed {job[1]}: {wall:.0f} s", flush=True)
        return wall, load0

    timing = {}
    if not args.collect:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            timing = dict(zip(jobs, pool.map(run, jobs)))
    builds = {f"{arm}/seed{seed}": read_build(WORK / f"{arm}-seed{seed}") | {
        "command": "edgekd " + " ".join(cmds[(arm, seed)]),
        "wall_s": round(timing[(arm, seed)][0], 1) if timing else None,
        "host_load_1min_before": round(timing[(arm, seed)][1], 2) if timing else None} for arm, seed in jobs}
    delta = {k: [100 * (builds[f"{args.kind}/seed{s}"]["sets"][k]["agreement"] - builds[f"none/seed{s}"]["sets"][k]["agreement"])
                 for s in args.seeds] for k in SETS}
    delta["natural_prompts"] = [100 * (builds[f"{args.kind}/seed{s}"]["natural_prompts"] - builds[f"none/seed{s}"]["natural_prompts"])
                                for s in args.seeds]
    write("lm_weighting", {
        "recipe": "smollm2-seqkd", "kind": args.kind, "seeds": args.seeds, "epochs": args.epochs,
        "threads": args.threads, "parallel": args.parallel, "host_cpu": host_cpu(), "notes": args.note,
        "settings": "the card as shipped (grown prompt set, general text), fp32, no control, no quantized teacher; "
                    "the arms differ only in distill.weighting",
        "builds": builds,
        "delta_points": {k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "per_seed": v} for k, v in delta.items()},
        "helps": all(d > 0 for d in delta["test"]),
        "total_seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
