"""What more answers buy a language-model student (issue #28 item 4): the smollm2-seqkd card on the grown prompt set
(benchmarks/grow_llm_prompts.py: the 900 frame prompts + teacher-written questions on seed topics + arithmetic and
reasoning frames), trained on nested subsets of its training prompts (`data.train_prompts`: 1 epoch each, so more
answers are more steps, as more data would be), held-out sets fixed. Writes benchmarks/results/lm_curve.json.

    python benchmarks/bench_lm_curve.py                      # points: a quarter, half and all training prompts
    python benchmarks/bench_lm_curve.py --points 100 200 0   # 0 = all
    python benchmarks/bench_lm_curve.py --resummarize        # the finished points' builds read again

Per point: next-token agreement with the teacher's answers on held-out templates/topics (test), in-template and on the
natural prompts (held out by source), each with its bootstrap 95% interval; the held-out test by source of prompt
(frame templates, teacher-written topics, arithmetic/reasoning frames); natural-text perplexity ratio; answer tokens
trained on; training seconds. Then the slope: points of held-out agreement per 1,000 answers (least squares over the
points, and between the last two), what 10x the answers would take on this host at the measured training rate, and
how many answers issue #28's goals would take read off the curve (`reach`: a log fit and the last two points' line,
both extrapolations).

Builds are fp32 only (no quantized candidates, no quantized teacher, no control, no general text: the curve is about
the answers); the largest point runs first, so the teacher answers every prompt once and the others reuse them.
Every figure is this host's (1 thread by default; `trained_on` names the GPU when the host has one: the teacher answers
and the student trains there, benchmarks/device_lm_curve.sh)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import RESULTS, ROOT, compute_device, edgekd, host_cpu, write

WORK = Path(os.environ.get("EDGEKD_BENCH_WORK", ROOT / "builds")) / "bench-lm-curve"


def source_of(template: str) -> str:
    if template.startswith("group:"):
        return "teacher-written (held-out topics)"
    if template.startswith(("arith:", "reason:")):
        return "arithmetic/reasoning (held-out frames)"
    return "frame templates (held-out templates)"


def by_source(per_template: dict[str, dict]) -> dict[str, dict]:
    """Token-weighted agreement per source of prompt, from a held-out set's per-template breakdown."""
    out: dict[str, dict] = {}
    for t, r in per_template.items():
        s = out.setdefault(source_of(t), {"hits": 0.0, "tokens": 0, "prompts": 0, "templates": 0})
        s["hits"] += r["agreement"] * r["tokens"]
        s["tokens"] += r["tokens"]
        s["prompts"] += r["prompts"]
        s["templates"] += 1
    return {k: {"agreement": v["hits"] / v["tokens"] if v["tokens"] else None, "tokens": v["tokens"],
                "prompts": v["prompts"], "templates": v["templates"]} for k, v in out.items()}


def read_point(out: Path) -> dict:
    d = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    gen = json.loads((out / "generate" / "result.json").read_text())["metrics"]
    nat = json.loads((out / "natural" / "result.json").read_text())["metrics"]
    ho = d["held_out"]
    hist = d["history"][-1]
    res = {"train_prompts": d["examples"]["train"], "answer_tokens": hist.get("train_answer_tokens"),
           "train_seconds": d["train_seconds"], "split": gen.get("split"),
           "held_out": {k: {kk: v[kk] for kk in ("agreement", "agreement_ci95", "perplexity", "prompts", "tokens")}
                        for k, v in ho.items()},
           "test_by_source": by_source(ho["test"]["per_template"]),
           "val_by_source": by_source(ho["val"]["per_template"]),
           "natural_prompts": {k: nat["student"][k] for k in ("agreement", "agreement_ci95", "prompts")},
           "teacher_natural_prompts": nat["teacher"]["agreement"],
           "natural_text_perplexity_ratio": (nat.get("natural_text") or {}).get("perplexity_ratio"),
           "teacher_held_out": {k: v["agreement"] for k, v in d["teacher_held_out"].items()},
           "stage_seconds": {s["stage"]: s["seconds"] for s in json.loads((out / "run.json").read_text())["stages"]}}
    return res


def slope(points: list[dict], key: str) -> dict:
    """Points of agreement per 1,000 answers: least squares over the points, and between the last two."""
    xs = [p["train_prompts"] for p in points]
    ys = [100 * p[key] for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    ls = 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else None
    last = 1000 * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if n >= 2 and xs[-1] != xs[-2] else None
    return {"least_squares_points_per_1000": ls, "last_two_points_per_1000": last}


GOALS = {"held_out_test": 0.55, "natural": 0.45}  # issue #28's goals for held-out-template and natural-prompt agreement


def log_fit(points: list[dict], key: str) -> tuple[float, float]:
    """(a, b) of agreement = a + b ln(answers), least squares over the points (b = 0 where they share one x)."""
    import math

    xs = [math.log(p["train_prompts"]) for p in points]
    ys = [p[key] for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def reach(points: list[dict], key: str, goal: float) -> dict:
    """How many training answers the goal would take, read off the curve two ways: the log fit (agreement = a + b ln N,
    least squares over the points: each doubling of the answers adds the same points, the usual shape of a learning
    curve) and the straight line through the last two points (no flattening at all: a lower bound). Both extrapolate
    past the last point; `None` where a curve does not rise."""
    import math

    ys = [p[key] for p in points]
    out: dict = {"goal": goal, "at_last_point": ys[-1], "last_point_answers": points[-1]["train_prompts"]}
    if len(points) < 2:
        return out | {"log_fit_answers": None, "linear_last_two_answers": None}
    a, b = log_fit(points, key)
    per_doubling = b * math.log(2)
    at_goal = math.exp((goal - a) / b) if b > 0 else None
    dx = points[-1]["train_prompts"] - points[-2]["train_prompts"]
    step = (ys[-1] - ys[-2]) / dx if dx else 0.0
    linear = points[-1]["train_prompts"] + (goal - ys[-1]) / step if step > 0 else None
    return out | {"log_fit": {"a": a, "b": b, "points_per_doubling": 100 * per_doubling},
                  "log_fit_answers": None if at_goal is None else round(max(at_goal, points[-1]["train_prompts"])),
                  "linear_last_two_answers": None if linear is None else round(max(linear, points[-1]["train_prompts"]))}


def curve_args(target: str, prompts: Path, epochs: int, sets: list[str]) -> list[str]:
    """`edgekd build` arguments of a curve point (without --out): the card, fp32 only, no control, no general text,
    no quantized teacher, the shipped natural prompts."""
    return ["--target", target, "--recipe", "smollm2-seqkd", "--quiet",
            "--set", f"data.path={prompts}", "--set", f"distill.epochs={epochs}",
            "--set", "generate.control=false", "--set", "distill.general_text=null", "--set", "generate.profile_repeats=1",
            "--set", "quantize.candidates=[fp32]", "--set", "quantize.accuracy_aware=false",
            "--set", "evaluate.quantized_teacher=[]",
            # with data.path the card names no natural prompts (a user's own data has none): the shipped set's
            "--set", f"evaluate.natural_prompts={ROOT / 'models' / 'prompts' / 'smollm2-natural.jsonl'}",
            *[a for s in sets for a in ("--set", s)]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=Path, default=ROOT / "models" / "prompts" / "smollm2-prompts-grown.jsonl")
    ap.add_argument("--points", type=int, nargs="+", default=None,
                    help="training prompts per point (0 = all); default: a quarter, half and all")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--target", default="cpu", help="the builds' target (its runtime profiles the fp32 student)")
    ap.add_argument("--results", default="lm_curve", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--resummarize", action="store_true",
                    help="build nothing: read the points' finished builds and write the results again")
    args = ap.parse_args()
    env = {"OMP_NUM_THREADS": str(args.threads)}
    t_all = time.perf_counter()
    common = curve_args(args.target, args.prompts, args.epochs, args.sets)
    points: dict[int, dict] = {}
    work = WORK / ("" if args.results == "lm_curve" else args.results)
    prev_path = RESULTS / f"{args.results}.json"
    prev = json.loads(prev_path.read_text()) if prev_path.is_file() else None
    prompts_rel = str(args.prompts.relative_to(ROOT) if args.prompts.is_relative_to(ROOT) else args.prompts)
    if args.resummarize:  # each finished point's build, with the command and wall time the run recorded for it
        ran = {p["train_prompts"]: p for p in (prev or {}).get("points", [])} if (prev or {}).get("prompts") == prompts_rel else {}
        for out in sorted(work.glob("n*")):
            if (out / "report" / "report.json").is_file():
                p = read_point(out)
                p |= {k: ran.get(p["train_prompts"], {}).get(k) for k in ("command", "wall_s", "host_load_1min_before")}
                points[p["train_prompts"]] = p
        if not points:
            raise SystemExit(f"no finished point under {work}")
    # the largest first: it answers every prompt; the others reuse the answers (cached per prompt)
    todo = [] if args.resummarize else sorted(args.points or [0], key=lambda n: (n != 0, -n))
    for n in todo:
        out = work / f"n{n or 'all'}"
        cmd = ["build", *common, "--out", str(out), *(["--set", f"data.train_prompts={n}"] if n else [])]
        load0 = os.getloadavg()[0]
        dt, r = edgekd(*cmd, env=env, check=False)
        if r.returncode != 0:
            raise SystemExit(f"edgekd {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        p = read_point(out) | {"command": "edgekd " + " ".join(cmd), "wall_s": round(dt, 1),
                               "host_load_1min_before": round(load0, 2)}
        points[n] = p
        print(f"  n={n or 'all'}: {p['train_prompts']} prompts, held-out {p['held_out']['test']['agreement']:.4f}, "
              f"natural {p['natural_prompts']['agreement']:.4f} ({dt / 60:.1f} min)", flush=True)
        if args.points is None and n == 0:  # the default points: fractions of the whole training split
            full = p["train_prompts"]
            todo += [full // 2, full // 4]
    curve = sorted(points.values(), key=lambda p: p["train_prompts"])
    for p in curve:
        p["held_out_test"] = p["held_out"]["test"]["agreement"]
        p["natural"] = p["natural_prompts"]["agreement"]
    last = curve[-1]
    rate = last["answer_tokens"] / last["train_seconds"] if last.get("answer_tokens") else None
    per_prompt_tokens = last["answer_tokens"] / last["train_prompts"] if last.get("answer_tokens") else None
    notes = args.note
    if args.resummarize and (prev or {}).get("prompts") == prompts_rel:  # the run's own settings and notes
        args.epochs, args.threads = prev["epochs"], prev["threads"]
        notes = [*prev.get("notes", []), *args.note]
    # a curve on another prompt set (its own held-out split) is kept beside the new one, not overwritten
    superseded = (prev or {}).get("superseded", [])
    if prev and prev.get("prompts") != prompts_rel:
        superseded = [{k: prev[k] for k in ("prompts", "created", "epochs", "points", "slope", "notes") if k in prev},
                      *superseded]
    write(args.results, {
        "prompts": prompts_rel, "superseded": superseded,
        "epochs": args.epochs, "threads": args.threads, "host_cpu": host_cpu(), "notes": notes,
        "target": args.target, "trained_on": compute_device(),
        "settings": "fp32, no control, no general text, no quantized teacher; held-out sets fixed across points",
        "points": curve,
        "slope": {"held_out_test": slope(curve, "held_out_test"), "natural_prompts": slope(curve, "natural")},
        "reach": {k: reach(curve, k, g) for k, g in GOALS.items()},
        "train_answer_tokens_per_s": rate, "answer_tokens_per_prompt": per_prompt_tokens,
        "ten_times": None if rate is None else {
            "answers": 10 * last["train_prompts"], "answer_tokens": 10 * last["answer_tokens"],
            "train_hours_here": 10 * last["answer_tokens"] / rate / 3600 * args.epochs,
            "note": "an estimate from this run's training rate (this host, 1 epoch), before the teacher answers the "
                    "extra prompts"},
        "total_seconds": (prev or {}).get("total_seconds") if args.resummarize else round(time.perf_counter() - t_all, 1)})


if __name__ == "__main__":
    main()
