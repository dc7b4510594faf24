"""Do several answers per prompt buy what more prompts buy? (issue #28 item 4, the curve's other axis.) The curve
(bench_lm_curve.py, results/lm_curve.json) grows the distinct training prompts; this grows the answers per training
prompt instead (`generate.train_samples`: the teacher's greedy answer plus N-1 sampled ones, temperature 0.7, top-p
0.9, duplicates dropped), the prompts, held-out sets and build settings those of the curve's last point (the card at 1
epoch, fp32, no control, no general text, no quantized teacher). Writes benchmarks/results/lm_samples.json.

    python benchmarks/bench_lm_samples.py                 # 4, 2 and 1 answers per training prompt, 1 epoch
    python benchmarks/bench_lm_samples.py --points 1x4    # one more point: 1 answer per prompt, 4 epochs (kept beside
                                                          # the finished points of lm_samples.json)

Per point: training prompts, answers and answer tokens trained on, held-out-template / in-template / natural-prompt
agreement with bootstrap intervals, natural-text perplexity ratio, training and sampling seconds; then, beside each
point, what the distinct-prompt curve's log fit (lm_curve.json, same prompt set) reads at the same number of answers:
more prompts against more answers per prompt at equal training compute (1 epoch: equal answers, equal steps). The
fit extrapolates past the curve's last point: it is said so in the file. A point KxE is K answers per prompt for E
epochs: 4x1 and 1x4 take the same training steps, more answers against more passes over the same ones. Every figure
is this host's."""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from _common import RESULTS, ROOT, compute_device, edgekd, host_cpu, write
from bench_lm_curve import WORK, curve_args, log_fit, read_point


def distinct_curve(prompts_rel: str) -> dict | None:
    """The distinct-prompt curve on the same prompt set (lm_curve.json, or a superseded curve of it): its points and
    the log fit (agreement = a + b ln answers) of held-out and natural-prompt agreement."""
    p = RESULTS / "lm_curve.json"
    if not p.is_file():
        return None
    cur = json.loads(p.read_text())
    for c in [cur, *cur.get("superseded", [])]:
        if c.get("prompts") == prompts_rel and c.get("epochs") == 1:
            fits = {key: dict(zip("ab", log_fit(c["points"], key))) for key in ("held_out_test", "natural")} \
                if len(c["points"]) >= 2 else {}
            return {"created": c.get("created"), "points": [{k: q[k] for k in ("train_prompts", "held_out_test", "natural")}
                                                            for q in c["points"]], "log_fit": fits,
                    "largest": max(q["train_prompts"] for q in c["points"])}
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=Path, default=ROOT / "models" / "prompts" / "smollm2-prompts-grown-x3.jsonl")
    ap.add_argument("--points", nargs="+", default=["4x1", "2x1", "1x1"],
                    help="KxE: K answers per training prompt, E epochs (the finished points of the results file kept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--target", default="cpu")
    args = ap.parse_args()
    env = {"OMP_NUM_THREADS": str(args.threads)}
    prompts_rel = str(args.prompts.relative_to(ROOT) if args.prompts.is_relative_to(ROOT) else args.prompts)
    curve = distinct_curve(prompts_rel)
    t_all = time.perf_counter()
    prev_path = RESULTS / "lm_samples.json"
    prev = json.loads(prev_path.read_text()) if prev_path.is_file() else {}
    kept = {(q["samples_per_prompt"], q.get("epochs", 1)): q for q in prev.get("points", [])} \
        if prev.get("prompts") == prompts_rel else {}
    todo = sorted({tuple(int(v) for v in s.split("x")) for s in args.points}, reverse=True)
    if not todo or any(k < 1 or e < 1 for k, e in todo):
        raise SystemExit("--points: KxE with K, E >= 1 (e.g. 4x1 1x4)")
    points = [q for key, q in kept.items() if key not in todo]
    for q in points:
        q.setdefault("epochs", 1)
        q.setdefault("trained_examples", q["answers"] * q["epochs"])
    # the most samples first: its sampled answers are cached per sample index, so the smaller points reuse them
    for k, e in todo:
        out = WORK / "samples" / (f"k{k}" if e == 1 else f"k{k}-e{e}")
        cmd = ["build", *curve_args(args.target, args.prompts, e, [*args.sets, f"generate.train_samples={k}"]),
               "--out", str(out)]
        load0 = os.getloadavg()[0]
        dt, r = edgekd(*cmd, env=env, check=False)
        if r.returncode != 0:
            raise SystemExit(f"edgekd {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        p = read_point(out)
        gen = json.loads((out / "generate" / "result.json").read_text())["metrics"]
        p["answers"] = p.pop("train_prompts")  # the curve's x: training examples, here several per prompt
        p["train_prompts"] = gen["splits"]["train"]
        p["samples_per_prompt"], p["epochs"] = k, e
        p["trained_examples"] = p["answers"] * e  # answer sequences passed through training
        p["sampling"] = gen.get("train_samples")
        p["held_out_test"] = p["held_out"]["test"]["agreement"]
        p["natural"] = p["natural_prompts"]["agreement"]
        if curve:
            # what the distinct-prompt curve (1 epoch) reads at the same training steps
            p["distinct_prompts_log_fit"] = {
                key: f["a"] + f["b"] * math.log(p["trained_examples"]) for key, f in curve["log_fit"].items()}
            p["distinct_prompts_extrapolated"] = p["trained_examples"] > curve["largest"]
        p |= {"command": "edgekd " + " ".join(cmd), "wall_s": round(dt, 1), "host_load_1min_before": round(load0, 2)}
        points.append(p)
        print(f"  {k}x{e}: {p['answers']} answers to {p['train_prompts']} prompts, held-out {p['held_out_test']:.4f}, "
              f"natural {p['natural']:.4f} ({dt / 60:.1f} min)", flush=True)
    points.sort(key=lambda q: (q["samples_per_prompt"], q.get("epochs", 1)))
    write("lm_samples", {
        "prompts": prompts_rel, "threads": args.threads, "host_cpu": host_cpu(),
        "notes": [*prev.get("notes", []), *args.note] if kept else args.note,
        "target": args.target, "trained_on": compute_device(),
        "settings": "the curve's: fp32, no control, no general text, no quantized teacher; held-out sets greedy "
                    "answers only, the same for every point",
        "sampling": next(({k: q["sampling"][k] for k in ("temperature", "top_p")} for q in points if q["sampling"]),
                         None),
        "distinct_prompt_curve": curve, "points": points,
        "total_seconds": round(time.perf_counter() - t_all, 1) + (prev.get("total_seconds") or 0 if kept else 0)})


if __name__ == "__main__":
    main()
