"""A language-model student cut to a per-token latency budget (issues #29 and #28): the budget is 1/FRACTION of the
teacher's fastest INT8 ONNX per-token p50 (the quantized teacher a user would otherwise ship), so a met budget is
"FRACTION x the teacher's int8 tokens/s" by construction, checked on the shipped artifact. Writes
benchmarks/results/lm_budget.json.

    python benchmarks/bench_lm_budget.py --threads 2        # smollm2-seqkd, 1 epoch: 36 min on 2 cores (2026-12-07)
    python benchmarks/bench_lm_budget.py --quick            # smoke run -> lm_budget-smoke.json

1. The budget: the teacher's fastest INT8 ONNX decode p50 in results/llm.json (int8-dynamic or int8-weight, whichever the
   card's build timed faster; `--teacher-ms` with `--teacher-kind` overrides), / FRACTION.
2. `edgekd build --recipe smollm2-seqkd --latency-budget Xms` with the card's recipe at --epochs (1 by default: the
   card's 4 take hours here) and `evaluate.quantized_teacher=[KIND]`: the same build measures the teacher's
   int8 tokens/s again beside the student, so the ratio is one run's, same runtime, same settings.
3. Read: the search table (each cut's ms/token before training, where measured), the winner and why, the budget on
   the shipped artifact, the search stage's seconds against the rest of the build, the student's tokens/s against
   the teacher's int8 in that build, and its agreement on in-template, held-out-template and natural prompts.

Every figure is this host's (onnxruntime, 1 thread): the cpu target's device is this host.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _common import host_cpu, RESULTS, ROOT, edgekd, rerun_search_into, write
from bench_budget import read_build

WORK = Path(os.environ.get("EDGEKD_BENCH_WORK", ROOT / "builds")) / "bench-lm-budget"


INT8_KINDS = ("int8-dynamic", "int8-weight")


def teacher_int8_ms() -> dict:
    """The teacher's fastest INT8 ONNX row of the card's build (results/llm.json): its decode p50 and its kind."""
    d = json.loads((RESULTS / "llm.json").read_text())
    rows = {k: d["teacher_onnxruntime"][f"teacher/{k}-onnx"] for k in INT8_KINDS
            if f"teacher/{k}-onnx" in d["teacher_onnxruntime"]}
    kind = min(rows, key=lambda k: rows[k]["decode_ms_per_token_p50"])
    return {"p50_ms": rows[kind]["decode_ms_per_token_p50"], "kind": kind,
            "from": f"results/llm.json ({d['created'][:10]}), teacher/{kind}-onnx decode_ms_per_token_p50 (the "
                    f"fastest of {', '.join(sorted(rows))})"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="smollm2-seqkd")
    ap.add_argument("--fraction", type=float, default=3.0, help="budget = teacher int8 ms/token / FRACTION")
    ap.add_argument("--teacher-ms", type=float, default=None, help="the teacher's int8 ms/token (else llm.json's)")
    ap.add_argument("--teacher-kind", choices=INT8_KINDS, default="int8-dynamic", help="the INT8 kind --teacher-ms is of")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--search-again", action="store_true", help="build nothing: run the finished build's search stage "
                    "again alone with this checkout's code (on a copy) and record its cost, table and winner")
    args = ap.parse_args()
    if args.search_again:
        rerun_search_into(RESULTS / ("lm_budget-smoke.json" if args.quick else "lm_budget.json"), [],
                          WORK / ("quick" if args.quick else "search"), {"OMP_NUM_THREADS": str(args.threads)})
        return
    t = {"p50_ms": args.teacher_ms, "kind": args.teacher_kind, "from": "--teacher-ms"} if args.teacher_ms \
        else teacher_int8_ms()
    budget = t["p50_ms"] / args.fraction
    out = WORK / ("quick" if args.quick else "search")
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["build", "--target", "cpu", "--recipe", args.recipe, "--out", str(out), "--quiet",
           "--latency-budget", f"{budget:.4f}ms", "--set", f"distill.epochs={args.epochs}",
           "--set", f"evaluate.quantized_teacher=[{t['kind']}]", *(["--quick"] if args.quick else []),
           *[a for s in args.sets for a in ("--set", s)]]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    dt, r = edgekd(*cmd, env={"OMP_NUM_THREADS": str(args.threads)}, check=False)
    res: dict = {"recipe": args.recipe, "fraction": args.fraction, "epochs": args.epochs, "quick": args.quick,
                 "threads": args.threads, "host_cpu": host_cpu(), "notes": args.note, "teacher_reference": t,
                 "budget": {"latency_ms": budget, "rule": f"teacher {t['kind']} ONNX ms/token / {args.fraction:g}"},
                 "command": "edgekd " + " ".join(cmd), "wall_s": round(dt, 1),
                 "host_load_1min": {"before": round(load0, 2), "after": round(os.getloadavg()[0], 2)}}
    if r.returncode != 0:
        res["error"] = " | ".join([ln for ln in r.stderr.strip().splitlines() if ln.strip()][-3:])[:800]
        return finish(args, res, t0)
    b = read_build(out)
    rep = json.loads((out / "report" / "report.json").read_text())
    rows = {f"{m['role']}/{m['variant']}": m for m in rep["models"]}
    sel = rows[rep["selected"]]
    tq = rows.get(f"teacher/{t['kind']}")
    st = b["stage_seconds"]
    search_s = st.get("search", 0.0)
    res |= {"search": b.get("search"), "selected": rep["selected"], "student_params": sel.get("params"),
            "student_tokens_per_s": sel.get("tokens_per_s"), "student_ms_per_token": sel.get("ms_per_token"),
            "student_size_bytes": sel.get("size_bytes"), "student_agreement": sel.get("agreement"),
            "teacher_int8": tq and {k: tq.get(k) for k in ("tokens_per_s", "ms_per_token", "size_bytes", "agreement")},
            "tokens_per_s_vs_teacher_int8": (sel.get("tokens_per_s") / tq["tokens_per_s"])
            if tq and tq.get("tokens_per_s") and sel.get("tokens_per_s") else None,
            "distill_vs_quantize": (rep["comparison"].get("distill_vs_quantize") or {}).get("sentence"),
            "held_out": {k: (v or {}).get("agreement") if isinstance(v, dict) else v
                         for k, v in (((rep.get("training") or {}).get("held_out") or {}).get("student") or {}).items()},
            "natural_text_perplexity_ratio": ((rep.get("training") or {}).get("natural_text") or {}).get("perplexity_ratio"),
            "stage_seconds": st,
            "search_cost": {"search_stage_s": search_s, "rest_of_build_s": sum(st.values()) - search_s,
                            "fraction_of_student_build": search_s / max(1e-9, sum(st.values()) - search_s)}}
    final = (rep.get("search") or {}).get("final") or {}
    res["goals_met"] = {"budget_met": bool(final.get("met")),
                        "tokens_per_s_vs_teacher_int8": bool(res["tokens_per_s_vs_teacher_int8"]
                                                             and res["tokens_per_s_vs_teacher_int8"] >= args.fraction),
                        "search_cost": res["search_cost"]["fraction_of_student_build"] <= 0.25}
    finish(args, res, t0)


def finish(args: argparse.Namespace, res: dict, t0: float) -> None:
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    write("lm_budget-smoke" if args.quick else "lm_budget", res)


if __name__ == "__main__":
    main()
