"""Do the teacher's token-level logits add anything over its answers (issue #28 goal: logit KD beats the answers-only
control on held-out-template agreement, every seed of 3)? The smollm2-seqkd card, one build per seed, each training
the student (soft top-k logits + hard labels on the teacher's answers) and its control (the same cut, answers, epochs
and seed, hard labels only); writes benchmarks/results/lm_kd_seeds.json.

    python benchmarks/bench_lm_kd_seeds.py                  # seeds 0 1 2, 1 epoch each
    python benchmarks/bench_lm_kd_seeds.py --collect        # build nothing: read the seed folders of an earlier run

Builds: distill.epochs=--epochs, fp32 only, no quantized teacher, no general text (the question is logits vs answers;
general text is measured by bench_general_text.py), one profile repeat. Per seed, from distill/result.json: held-out
template (test), in-template and validation agreement of student and control with 95% bootstrap intervals, and the
gain in points; the natural prompts are scored for the student only (the natural stage scores the shipped student).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import host_cpu, ROOT, edgekd, write

WORK = Path(os.environ.get("EDGEKD_BENCH_WORK", ROOT / "builds")) / "bench-lm-kd-seeds"
COMMON = ["--target", "cpu", "--recipe", "smollm2-seqkd", "--quiet", "--set", "generate.control=true",
          "--set", "quantize.candidates=[fp32]", "--set", "quantize.accuracy_aware=false",
          "--set", "evaluate.quantized_teacher=[]", "--set", "distill.general_text=null",
          "--set", "generate.profile_repeats=1"]


def read_seed(out: Path) -> dict:
    d = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    nat = json.loads((out / "natural" / "result.json").read_text())["metrics"]
    ctrl = d["control"]
    res: dict = {"out": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                 "train_seconds": {"student": d["train_seconds"], "control": ctrl["train_seconds"]},
                 "natural_prompts_student": nat["student"]["agreement"], "sets": {}}
    for k in ("val", "test", "test_in_template"):
        s, c = d["held_out"][k], ctrl["held_out"][k]
        res["sets"][k] = {"student": s["agreement"], "student_ci95": s["agreement_ci95"], "control": c["agreement"],
                          "control_ci95": c["agreement_ci95"], "gain_points": 100 * (s["agreement"] - c["agreement"]),
                          "prompts": s["prompts"]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    t0 = time.perf_counter()
    seeds = {}
    for seed in args.seeds:
        out = WORK / f"seed{seed}"
        cmd = ["build", *COMMON, "--out", str(out), "--set", f"distill.epochs={args.epochs}",
               "--set", f"distill.seed={seed}", *[a for s in args.sets for a in ("--set", s)]]
        wall, load0 = None, None
        if not args.collect:
            load0 = os.getloadavg()[0]
            wall, r = edgekd(*cmd, env={"OMP_NUM_THREADS": str(args.threads)}, check=False)
            if r.returncode != 0:
                raise SystemExit(f"edgekd {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        seeds[str(seed)] = read_seed(out) | {"command": "edgekd " + " ".join(cmd),
                                             "wall_s": None if wall is None else round(wall, 1),
                                             "host_load_1min_before": None if load0 is None else round(load0, 2)}
        g = seeds[str(seed)]["sets"]["test"]["gain_points"]
        print(f"  seed {seed}: held-out-template gain {g:+.2f} points", flush=True)
    gains = {k: [s["sets"][k]["gain_points"] for s in seeds.values()] for k in ("val", "test", "test_in_template")}
    write("lm_kd_seeds", {
        "recipe": "smollm2-seqkd", "epochs": args.epochs, "threads": args.threads, "host_cpu": host_cpu(),
        "notes": args.note, "settings": "fp32, no general text, no quantized teacher; control: the same cut on the "
                                        "teacher's answers with hard labels only",
        "seeds": seeds,
        "gain_points": {k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "per_seed": v}
                        for k, v in gains.items()},
        "goal": "logit KD beats the answers-only control on held-out-template (test) agreement, every seed",
        "goal_met": all(g > 0 for g in gains["test"]),
        "total_seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
