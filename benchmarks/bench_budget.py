"""Students sized to the device (issue #29): a latency budget of 1/FRACTION of the teacher's p50 on the target's
own runtime picks the student; is it met on the final artifact, how accurate is the winner against hand-sized
students of the same budget, and what does the search cost? Writes benchmarks/results/budget.json (one section per
target; a run of one target keeps the other's section).

    python benchmarks/bench_budget.py --target cpu                       # fashion-cnn, 1/20 of the teacher's ONNX p50
    python benchmarks/bench_budget.py --target mobile --size-budget 64KiB  # + a size budget, .pte on this host
    python benchmarks/bench_budget.py --target cpu --quick --hand 1      # smoke run -> budget-smoke.json

1. The budget: the teacher (the card's shipped weights) on the target runtime, measured by edgekd's own profiler
   in a fresh process: `edgekd profile teacher.onnx --target cpu` for ONNX targets; for mobile the teacher's fp32
   .pte timed by the same ExecuTorch timer the search and the mobile bundle use. Budget = that p50 / FRACTION.
2. The search build: `edgekd build --target T --latency-budget Xms [--size-budget S]`, unchanged. Read from it: the
   final budget check (report.json `search.final`, the shipped artifact measured by the profile stage), the
   same-runtime speed-up (teacher p50 from step 1 / shipped p50, both this host's), retention (shipped test
   accuracy / teacher's), and the search stage's seconds against the rest of the build's (run.json).
3. Hand-sized students of the same budget: what a user sizing by hand would try, taken from the search's own
   timing table so that they fit by the same measurement: for each depth (number of stages) the widest
   architecture that fits, i.e. "fewer stages", "the card's stages, narrower", "more stages". Each is built in full
   with the same recipe (`--set student.kwargs.widths=...`, no search); the one equal to the winner is the search
   build itself. Goal: the winner at least as accurate (test) as the best of them.

Every figure is measured on this host (onnxruntime or ExecuTorch on the host CPU, labelled `host` when the target
is a phone); nothing is a device figure. Builds run one at a time with OMP_NUM_THREADS=--threads.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import host_cpu, RESULTS, ROOT, edgekd, rerun_search_into, write

sys.path.insert(0, str(ROOT))
WORK = ROOT / "builds" / "bench-budget"


def teacher_p50_onnx(build: Path, target: str, env: dict) -> dict:
    """The teacher's fp32 ONNX (exported by a build) timed by `edgekd profile` on the target card's settings."""
    _, r = edgekd("profile", str(build / "export" / "teacher.onnx"), "--target", target, "--json", env=env)
    d = json.loads(r.stdout)
    return {"artifact": "teacher fp32 ONNX", "runtime": d["runtime"], "p50_ms": d["latency_ms"]["p50"],
            "size_bytes": d["size_bytes"], "threads": d["threads"], "how": f"edgekd profile teacher.onnx --target {target}"}


def teacher_p50_pte(build: Path, threads: int) -> dict:
    """The teacher's fp32 .pte on this host's ExecuTorch, timed like the search's and the bundle's programs."""
    import torch

    from edgekd.cards import load_recipe
    from edgekd.profile.runner import spawn
    from edgekd.targets.mobile.executorch import export_pte
    from edgekd.targets.mobile.pte_timer import PteTimingSpec
    from edgekd.tasks.classification.search import SEARCH_TIMING
    from edgekd.tasks.common import load_model

    recipe = load_recipe(str(build / "recipe.yaml"))
    teacher = load_model(recipe.teacher, build / "teacher" / "teacher.pt").eval()
    shape = [1, 1, 28, 28]
    d = build / "bench-teacher-pte"
    d.mkdir(exist_ok=True)
    path = d / "teacher_fp32.pte"
    export_pte(teacher, torch.zeros(shape), path, quantize="fp32")
    spec = PteTimingSpec(path=str(path), input_shape=shape, runs=1000, warmup=SEARCH_TIMING["warmup_runs"], threads=threads)
    out = spawn("edgekd.targets.mobile.pte_timer", spec, path.name, threads, d / "logs", "teacher-pte-fp32", 600.0)
    return {"artifact": "teacher fp32 .pte", "runtime": "executorch (this host)", "p50_ms": float(out["latency_ms"]["p50"]),
            "size_bytes": path.stat().st_size, "threads": threads, "how": "export_pte(fp32) + pte_timer, 1000 runs"}


def build(tag: str, args: argparse.Namespace, extra: list[str], env: dict) -> dict:
    out = WORK / args.target / tag
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["build", "--target", args.target, "--recipe", args.recipe, "--quiet", "--out", str(out), *extra]
    if args.quick:
        cmd.append("--quick")
    for s in args.sets:
        cmd += ["--set", s]
    load0 = os.getloadavg()[0]
    dt, r = edgekd(*cmd, env=env, check=False)
    res: dict[str, Any] = {"tag": tag, "command": "edgekd " + " ".join(cmd), "wall_s": round(dt, 1),
                           "host_load_1min_before": round(load0, 2), "rc": r.returncode}
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        res["error"] = " | ".join(lines[-3:])[:800]
        print(f"  {tag}: FAILED {res['error']}", flush=True)
        return res
    res |= read_build(out)
    print(f"  {tag}: {res['selected']} acc={res['selected_accuracy']} p50={res['selected_p50_ms']} ms ({dt:.0f} s)", flush=True)
    return res


def read_build(out: Path) -> dict:
    """What the goals read from one finished build folder (report.json, run.json, the recipe it built)."""
    rep = json.loads((out / "report" / "report.json").read_text())
    stages = {s["stage"]: s["seconds"] for s in json.loads((out / "run.json").read_text())["stages"]}
    sel = next(m for m in rep["models"] if f"{m['role']}/{m['variant']}" == rep["selected"])
    teacher = next(m for m in rep["models"] if m["role"] == "teacher" and m["variant"] == "fp32-torch")
    fp32 = next((m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32"), None)
    res = {"out": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out), "stage_seconds": stages, "selected": rep["selected"],
            "selected_accuracy": sel.get("accuracy"), "selected_p50_ms": (sel.get("latency_ms") or {}).get("p50"),
            "selected_size_bytes": sel.get("size_bytes"), "selected_measured_on": sel.get("measured_on"),
            "selected_runtime": sel.get("runtime"), "student_fp32_accuracy": fp32 and fp32.get("accuracy"),
            "teacher_accuracy": teacher.get("accuracy"),
            "teacher_onnx_speedup_p50": rep["comparison"].get("teacher_onnx_speedup_p50"),
            "report_speedup_p50": rep["comparison"].get("speedup_p50"), "student_kwargs": _kwargs(out)}
    if rep.get("search"):
        s = rep["search"]
        res["search"] = {"budget": s["budget"], "final": s["final"], "winner": s["winner"], "why": s["why"],
                         "space_from": s["space_from"], "measured_on": s["measured_on"], "device": s["device"],
                         "candidates": s["candidates"]}
    return res


def _kwargs(out: Path) -> dict:
    from edgekd.cards import load_recipe

    return dict(load_recipe(str(out / "recipe.yaml")).student.kwargs)


def hand_sized(search: dict, n: int) -> list[dict]:
    """For each depth in the search table, the widest architecture that fits (by the search's own measurement)."""
    by_depth: dict[int, dict] = {}
    for c in search["candidates"]:
        if not c.get("fits"):
            continue
        widths = c["kwargs"]["widths"]
        best = by_depth.get(len(widths))
        if best is None or (c["params"], -c["latency_ms"]) > (best["params"], -best["latency_ms"]):
            by_depth[len(widths)] = c
    picks = sorted(by_depth.values(), key=lambda c: c["params"], reverse=True)[:n]
    return [{"kwargs": c["kwargs"], "params": c["params"], "search_latency_ms": c["latency_ms"],
             "search_variant": c["variant"], "depth": len(c["kwargs"]["widths"])} for c in picks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="cpu", choices=["cpu", "mobile"])
    ap.add_argument("--recipe", default="fashion-cnn")
    ap.add_argument("--fraction", type=float, default=20.0, help="latency budget = teacher p50 / FRACTION")
    ap.add_argument("--size-budget", default=None, help="also a size budget, e.g. 64KiB")
    ap.add_argument("--hand", type=int, default=3, help="hand-sized students built in full (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every build")
    ap.add_argument("--quick", action="store_true", help="--quick builds (smoke): writes budget-smoke.json")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--search-again", action="store_true", help="build nothing: run the search stage of the target's "
                    "finished search build again alone with this checkout's code (on a copy) and record its cost")
    ap.add_argument("--work", type=Path, default=WORK, help="where the builds are (default builds/bench-budget)")
    ap.add_argument("--resummarize", action="store_true", help="build nothing: recompute the derived figures of the "
                    "results file's sections from their stored builds")
    args = ap.parse_args()
    if args.search_again:
        rerun_search_into(RESULTS / ("budget-smoke.json" if args.quick else "budget.json"), ["targets", args.target],
                          args.work / args.target / "search", {"OMP_NUM_THREADS": str(args.threads)})
        return
    if args.resummarize:
        p = RESULTS / ("budget-smoke.json" if args.quick else "budget.json")
        d = json.loads(p.read_text())
        for target, sec in d["targets"].items():
            if "error" not in sec["search_build"]:
                read_hands(sec, args.work / target)
                summarize(sec)
        p.write_text(json.dumps(d, indent=2))
        return
    env = {"OMP_NUM_THREADS": str(args.threads)}
    t_all = time.perf_counter()
    sec: dict[str, Any] = {"recipe": args.recipe, "fraction": args.fraction, "quick": args.quick, "threads": args.threads,
                           "notes": args.note, "host_cpu": host_cpu()}

    # 1. the teacher on the target runtime, from a quick build's own teacher (shipped weights; export stage only needed)
    ref = WORK / args.target / "ref"
    shutil.rmtree(ref, ignore_errors=True)
    edgekd("build", "--target", "cpu", "--recipe", args.recipe, "--quick", "--quiet", "--out", str(ref),
           "--set", "quantize.candidates=[fp32]", env=env)
    t = teacher_p50_onnx(ref, args.target, env) if args.target == "cpu" else teacher_p50_pte(ref, args.threads)
    budget_ms = t["p50_ms"] / args.fraction
    sec["teacher_reference"] = t
    sec["budget"] = {"latency_ms": budget_ms, "size": args.size_budget,
                     "rule": f"{t['artifact']} p50 / {args.fraction:g} on this host"}
    print(f"teacher p50 {t['p50_ms']:.4f} ms -> latency budget {budget_ms * 1000:.1f} us", flush=True)

    # 2. the search build
    extra = ["--latency-budget", f"{budget_ms:.6f}ms"] + (["--size-budget", args.size_budget] if args.size_budget else [])
    s = build("search", args, extra, env)
    sec["search_build"] = s
    if "error" in s:
        sec["goals_met"] = {"budget_met": False}
        return finish(args, sec, t_all)
    # 3. hand-sized students of the same budget
    hands = []
    for h in hand_sized(s["search"], args.hand):
        if h["kwargs"] == s["search"]["winner"]["kwargs"]:
            hands.append({**h, "is_winner": True, "build": "search"})
            continue
        b = build("hand-" + "-".join(map(str, h["kwargs"]["widths"])), args,
                  ["--set", "student.kwargs.widths=" + json.dumps(h["kwargs"]["widths"])], env)
        hands.append({**h, "is_winner": False, "build": b})
    sec["hand_sized"] = hands
    summarize(sec)
    finish(args, sec, t_all)


def read_hands(sec: dict, work: Path) -> None:
    """Hand-sized builds the section lacks (a run stopped before they finished) read from their folders once they
    have a report (`hand-<widths>` under WORK/TARGET, built with the command bench_budget runs)."""
    for h in sec.get("hand_sized", []):
        if h.get("is_winner") or (h.get("build") or {}).get("selected_accuracy") is not None:
            continue
        tag = "hand-" + "-".join(map(str, h["kwargs"]["widths"]))
        out = work / tag
        if (out / "report" / "report.json").is_file():
            h["build"] = {"tag": tag, "rc": 0, "wall_s": None, "command": "edgekd build --target {t} --recipe {r} --quiet "
                          "--out {o} --set student.kwargs.widths={w}".format(t=work.name, r=sec["recipe"], o=out.name,
                                                                             w=json.dumps(h["kwargs"]["widths"])),
                          "note": "read from its finished folder by --resummarize"} | read_build(out)


def summarize(sec: dict) -> None:
    """The derived figures and goals of one target's section, from its builds alone (--resummarize reruns it)."""
    s, t, fraction = sec["search_build"], sec["teacher_reference"], sec["fraction"]
    sec["budget"]["rule"] = f"{t['artifact']} p50 / {fraction:g} on this host"
    st = s["stage_seconds"]
    search_s = st.get("search", 0.0)
    sec["search_cost"] = {"search_stage_s": search_s, "rest_of_build_s": sum(st.values()) - search_s,
                          "fraction_of_student_build": search_s / max(1e-9, sum(st.values()) - search_s),
                          "note": "the search stage's seconds over the seconds of every other stage of the same build "
                                  "(the build of the student it found); the shipped teacher is not trained"}
    p50 = s["selected_p50_ms"]
    sec["same_runtime_speedup"] = t["p50_ms"] / p50 if p50 else None
    sec["retention"] = s["selected_accuracy"] / s["teacher_accuracy"]
    # the winner against the hand-sized students that are not the winner itself
    others = [h["build"]["selected_accuracy"] for h in sec.get("hand_sized", [])
              if not h.get("is_winner") and h["build"].get("selected_accuracy") is not None]
    best_hand = max(others) if others else None
    final = s["search"]["final"]
    sec["goals"] = {"budget_met_on_final_artifact": "report.json search.final.met",
                    "same_runtime_speedup": f">= {fraction:g}x", "retention": ">= 97%",
                    "winner_vs_best_hand_sized": ">= 0 points (test accuracy of the shipped artifacts)",
                    "search_cost": "<= 25% of the rest of the build"}
    sec["winner_minus_best_hand_points"] = None if best_hand is None else 100 * (s["selected_accuracy"] - best_hand)
    sec["goals_met"] = {"budget_met": bool(final["met"]),
                        "same_runtime_speedup": bool(sec["same_runtime_speedup"] and sec["same_runtime_speedup"] >= fraction),
                        "retention": sec["retention"] >= 0.97,
                        "winner_vs_hand": None if best_hand is None else s["selected_accuracy"] >= best_hand,
                        "search_cost": (sec.get("search_again") or sec["search_cost"])["fraction_of_student_build"] <= 0.25}


def finish(args: argparse.Namespace, sec: dict, t_all: float) -> None:
    sec["total_seconds"] = round(time.perf_counter() - t_all, 1)
    name = "budget-smoke" if args.quick else "budget"
    p = RESULTS / f"{name}.json"
    old = json.loads(p.read_text()) if p.is_file() else {}
    targets = {**old.get("targets", {}), args.target: sec}
    write(name, {"targets": targets})


if __name__ == "__main__":
    main()
