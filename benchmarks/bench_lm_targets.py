"""smollm2-seqkd on every target: one distilled student, built for cpu, mobile and ascend (and cuda when a
GPU host's report is given) -> results/lm_targets.json, the README's per-target tables.

    python benchmarks/bench_lm_targets.py                    # full recipe (cpu build from bench_llm.py, or made)
    python benchmarks/bench_lm_targets.py --quick            # the --quick builds -> results/lm_targets-quick.json
    python benchmarks/bench_lm_targets.py --skip-build       # summarize the existing builds again
    python benchmarks/bench_lm_targets.py --cuda-report llm-cuda.json   # + the report benchmarks/device_cuda.sh
                                                                         #   brought back from a GPU host

The student is trained once: the cpu build (builds/bench-llm, made by bench_llm.py, or made here) lends its
teacher, generate and distill stages to each target's build folder, whose own stages (export, quantize,
profile, select, convert, report) then run with `edgekd build --target T`; run.json says which stages were
reused. So the targets compare one student on three runtimes, not three trainings.

Per target it records the report's rows (where each was measured), the selected artifact, the build's wall
time, and the issue's goals with pass/fail:
- mobile (ExecuTorch on this host): the selected student .pte >= 3x the teacher .pte's tokens/s, its next-token
  agreement within 2 points of the student's fp32 ONNX, its size <= 1/4 of the teacher .pte's;
- ascend: the static prefill/decode graphs pass the op lint; then the same build again with the recorded
  Ascend tools on PATH (tests/ascend_fakes.py: atc, msit, npu-smi replaying captured output) must yield a
  `measured_on: device` row per graph with msit's figures and npu-smi joules per token. Those rows are a
  wiring check of the device path, NOT a measurement: their values are the recordings', and the README
  says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from _common import ROOT, edgekd, report, write

RECIPE = "smollm2-seqkd"
SHARED_STAGES = ("teacher", "generate", "distill", "natural")  # the training (and its natural-prompt scores) the targets share
GOALS = {"pte_tokens_per_s_ratio": 3.0, "pte_agreement_drop_points": 2.0, "pte_size_fraction": 0.25}


def seed(src: Path, out: Path) -> None:
    """A fresh build folder holding the cpu build's training stages (reused by key, or retrained when the
    keys differ: run.json records which)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for s in SHARED_STAGES:
        if (src / s).is_dir():
            shutil.copytree(src / s, out / s, symlinks=True)


def build(target: str, out: Path, quick: bool, extra: list[str], env: dict | None = None) -> float:
    cmd = ["build", "--recipe", RECIPE, "--target", target, "--quiet", "--out", str(out), *extra]
    cmd += ["--quick"] if quick else []
    wall, _ = edgekd(*cmd, env=env)
    (out / "bench-wall.json").write_text(json.dumps({"wall_s": round(wall, 1), "command": cmd}))  # for --skip-build
    return round(wall, 1)


def rows(rep: dict) -> list[dict]:
    out = []
    for m in rep["models"]:
        out.append({
            "model": f"{m['role']}/{m['variant']}", "runtime": m["runtime"], "format": m.get("format"),
            "measured_on": m.get("measured_on"), "params": m.get("params"), "size_bytes": m.get("size_bytes"),
            "agreement": m.get("agreement", m.get("accuracy")), "accuracy_measured_on": m.get("accuracy_measured_on"),
            "ttft_ms_p50": (m.get("ttft_ms") or {}).get("p50"), "ms_per_token_p50": (m.get("ms_per_token") or {}).get("p50"),
            "tokens_per_s": m.get("tokens_per_s"), "peak_rss_bytes": m.get("peak_rss_bytes"),
            "joules_per_token": m.get("joules_per_token"), "energy_method": (m.get("energy") or {}).get("method"),
            "selected": f"{m['role']}/{m['variant']}" == rep["selected"]})
    return out


def summary(out: Path, wall: float | None) -> dict:
    rep = report(out)
    if wall is None and (out / "bench-wall.json").is_file():  # built earlier by build()
        wall = json.loads((out / "bench-wall.json").read_text())["wall_s"]
    run = json.loads((out / "run.json").read_text())
    return {
        "build": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out), "target": rep["target"],
        "build_wall_s": wall, "stages": [{k: s[k] for k in ("stage", "seconds", "reused")} for s in run["stages"]],
        "selected": rep["selected"], "models": rows(rep), "comparison": rep["comparison"],
        "artifact_selection": rep.get("artifact_selection"),
        "candidates": [{k: c.get(k) for k in ("variant", "format", "status", "accuracy", "size_bytes")}
                       for c in rep["candidates"]],
        "measurements": rep.get("measurements"), "notes": rep["notes"]}


def _goal(value: float | None, goal: float, higher: bool) -> dict:
    met = None if value is None else (value >= goal if higher else value <= goal)
    return {"value": value, "goal": goal, "met": met}


def mobile_goals(s: dict) -> dict:
    by = {r["model"]: r for r in s["models"]}
    sel = by.get(s["selected"])
    teacher = next((r for r in s["models"] if r["model"].startswith("teacher/") and r["format"] == "pte"), None)
    onnx_fp32 = by.get("student/fp32")
    if sel is None or sel["format"] != "pte":
        return {"error": f"the selected artifact {s['selected']} is not a .pte"}
    if teacher is None:
        return {"error": "no teacher .pte row (generate.teacher_on_target false?): the ratio needs the teacher "
                         "on the same runtime"}
    tps = None if not (sel["tokens_per_s"] and teacher["tokens_per_s"]) else sel["tokens_per_s"] / teacher["tokens_per_s"]
    drop = None if onnx_fp32 is None else 100 * (onnx_fp32["agreement"] - sel["agreement"])
    return {"student": sel["model"], "teacher": teacher["model"],
            "tokens_per_s_ratio_vs_teacher_pte": _goal(tps, GOALS["pte_tokens_per_s_ratio"], True),
            "agreement_drop_points_vs_student_fp32_onnx": _goal(drop, GOALS["pte_agreement_drop_points"], False),
            "size_fraction_of_teacher_pte": _goal(sel["size_bytes"] / teacher["size_bytes"], GOALS["pte_size_fraction"],
                                                  False)}


def ascend_goals(s: dict, device: dict | None, bundle: Path) -> dict:
    man = json.loads((bundle / "manifest.json").read_text())
    graphs = [r for r in s["models"] if r["model"].endswith("-om")]
    out = {"graphs": [r["model"] for r in graphs],
           "lint_ok": bool((man.get("lint") or {}).get("ok")) and all(g["lint"]["ok"] for g in man["graphs"].values()),
           "static_shapes": all(isinstance(d, int) and d > 0 for g in man["graphs"].values()
                                for io in ("inputs", "outputs") for shape in g[io].values() for d in shape),
           "prompt_length": man.get("prompt_length"), "cache_length": man.get("cache_length"),
           "host_parity_ok": bool((man.get("host_parity") or {}).get("ok"))}
    if device is not None:
        drows = [r for r in device["models"] if r["model"].endswith("-om")]
        out["recorded_tools_device_rows"] = {
            "source": "recorded tool output (tests/fixtures/ascend via tests/ascend_fakes.py): a wiring check of the "
                      "device path, not a measurement",
            "rows": len(drows), "every_graph": {r["model"] for r in drows} == set(out["graphs"]),
            "all_measured_on_device": all(r["measured_on"] == "device" for r in drows),
            "all_npu_smi_energy_per_token": all(r["energy_method"] == "npu-smi" and (r["joules_per_token"] or 0) > 0
                                                for r in drows)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from", dest="src", type=Path, default=None,
                    help="the cpu build lending its training stages (default builds/bench-llm[-quick]; made when absent)")
    ap.add_argument("--targets", nargs="+", default=["mobile", "ascend"])
    ap.add_argument("--skip-build", action="store_true", help="summarize the existing builds")
    ap.add_argument("--cuda-report", type=Path, default=None,
                    help="report.json of the smollm2 cuda build from benchmarks/device_cuda.sh (llm-cuda.json)")
    ap.add_argument("--set", action="append", default=[], help="extra --set for every build")
    args = ap.parse_args()
    tag = "-quick" if args.quick else ""
    src = args.src or ROOT / "builds" / f"bench-llm{tag}"
    extra = [x for s in args.set for x in ("--set", s)]
    res: dict = {"recipe": RECIPE, "quick": args.quick, "sets": args.set,
                 "threads": int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None,
                 "shared_training_from": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src),
                 "targets": {}}
    if not (src / "report" / "report.json").is_file():
        if args.skip_build:
            raise SystemExit(f"no cpu build at {src}: run without --skip-build")
        wall = build("cpu", src, args.quick, extra)
        res["targets"]["cpu"] = summary(src, wall)
    else:
        res["targets"]["cpu"] = summary(src, None)  # bench_llm.py's build (its wall time is in llm.json)
    for target in args.targets:
        out = ROOT / "builds" / f"bench-lm-{target}{tag}"
        wall = None
        if not args.skip_build:
            seed(src, out)
            wall = build(target, out, args.quick, extra)
        s = summary(out, wall)
        if target == "mobile":
            s["goals"] = mobile_goals(s)
        elif target == "ascend":
            dev_out = ROOT / "builds" / f"bench-lm-ascend-recorded{tag}"
            if not args.skip_build:
                sys.path.insert(0, str(ROOT))
                from tests import ascend_fakes

                seed(out, dev_out)
                bin_dir = ascend_fakes.install(dev_out.parent / f".ascend-fakes{tag}")
                build("ascend", dev_out, args.quick, extra, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
            device = summary(dev_out, None) if (dev_out / "report" / "report.json").is_file() else None
            s["goals"] = ascend_goals(s, device, out / "convert" / "ascend")
            if device is not None:
                s["recorded_tools_build"] = {"build": device["build"], "models": device["models"],
                                             "measurements": device["measurements"]}
        res["targets"][target] = s
    if args.cuda_report is not None:
        rep = json.loads(args.cuda_report.read_text())
        res["targets"]["cuda"] = {"build": str(args.cuda_report), "target": rep["target"], "selected": rep["selected"],
                                  "models": rows(rep), "comparison": rep["comparison"], "notes": rep["notes"]}
    else:
        res["targets"]["cuda"] = {"not_run": "no GPU host's report given (benchmarks/device_cuda.sh runs the cuda "
                                             "build where a GPU is lent; none was lent to the sessions so far)"}
    write(f"lm_targets{tag}", res)


if __name__ == "__main__":
    main()
