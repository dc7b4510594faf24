"""smollm2-seqkd: the full build's table — what a user compares for a phone.

    python benchmarks/bench_llm.py                         # full recipe -> results/llm.json
    python benchmarks/bench_llm.py --quick                 # smoke run  -> results/llm-quick.json
    python benchmarks/bench_llm.py --build DIR --skip-build  # summarize an existing build

Per model (teacher in PyTorch eager; the student's candidates on onnxruntime, KV cache, 1 thread):
next-token agreement with the teacher's answers and perplexity of them on held-out prompts, time
to first token, decode ms/token and tokens/s, size, peak RSS, energy per token (an estimate on this
host). And the point of sequence-level KD: the student trained on the teacher's answers against
the same student trained on the prompts' raw text alone (the control).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import ROOT, edgekd, report, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", type=Path, default=None)
    ap.add_argument("--skip-build", action="store_true", help="summarize --build without rebuilding")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the build")
    args = ap.parse_args()
    build = args.build or ROOT / "builds" / ("bench-llm-quick" if args.quick else "bench-llm")
    wall = None
    if not args.skip_build:
        shutil.rmtree(build, ignore_errors=True)
        cmd = ["build", "--recipe", "smollm2-seqkd", "--target", "cpu", "--quiet", "--out", str(build)]
        cmd += ["--quick"] if args.quick else []
        for s in args.set:
            cmd += ["--set", s]
        wall, _ = edgekd(*cmd)
    rep = report(build)
    run = json.loads((build / "run.json").read_text())
    d = json.loads((build / "distill" / "result.json").read_text())["metrics"]
    models = []
    for m in rep["models"]:
        models.append({
            "model": f"{m['role']}/{m['variant']}", "runtime": m["runtime"], "params": m["params"],
            "size_bytes": m["size_bytes"], "agreement": m["accuracy"], "perplexity": m.get("perplexity"),
            "ttft_ms_p50": (m.get("ttft_ms") or {}).get("p50"), "decode_ms_per_token_p50": m["latency_ms"]["p50"],
            "tokens_per_s": m.get("tokens_per_s"), "peak_rss_bytes": m.get("peak_rss_bytes"),
            "joules_per_token": (m.get("energy") or {}).get("joules_per_inference"),
            "energy_method": (m.get("energy") or {}).get("method")})
    ctrl = rep["training"]["control"]
    out = {
        "recipe": "smollm2-seqkd", "quick": args.quick, "sets": args.set,
        "build_wall_s": None if wall is None else round(wall, 1),
        "stage_seconds": {s["stage"]: s["seconds"] for s in run["stages"]},
        "generation": rep["generation"], "student_arch": d["arch"], "student_params": d["params"],
        "models": models, "candidates": [{k: c.get(k) for k in ("variant", "status", "accuracy", "perplexity",
                                                                 "size_bytes", "error")} for c in rep["candidates"]],
        "selected": rep["selected"], "comparison": rep["comparison"],
        "seqkd_vs_control": {
            "student_test": d["test"], "control_test": ctrl["test"] if ctrl else None,
            "teacher_test": d["teacher"]["test"],
            "agreement_gain_points": None if not ctrl else 100 * (d["test"]["agreement"] - ctrl["test"]["agreement"]),
            "perplexity_ratio_control_over_student": None if not ctrl else ctrl["test"]["perplexity"] / d["test"]["perplexity"],
        },
        "history": d["history"],
        "notes": rep["notes"],
    }
    write("llm-quick" if args.quick else "llm", out)


if __name__ == "__main__":
    main()
