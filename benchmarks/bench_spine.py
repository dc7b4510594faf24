"""Spine benchmarks (issue 2): build wall times, the headline teacher-vs-student figures, and KD vs
labels-only with the same student and epochs. Writes benchmarks/results/spine.json.

    python benchmarks/bench_spine.py [--skip-quick] [--skip-kd] [--skip-full]

--skip-full re-measures only the quick builds and merges them into the existing spine.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile

from _common import RESULTS, ROOT, edgekd, report, student, write

ap = argparse.ArgumentParser()
ap.add_argument("--skip-quick", action="store_true")
ap.add_argument("--skip-kd", action="store_true")
ap.add_argument("--skip-full", action="store_true", help="quick builds only; merge into the existing results")
args = ap.parse_args()
out: dict = {}
builds = ROOT / "builds"
prev_file = RESULTS / "spine.json"
prev = json.loads(prev_file.read_text()) if prev_file.exists() else {}
if args.skip_full:  # keep the full build's figures
    out = {k: v for k, v in prev.items() if k not in ("benchmark", "host", "cpu_count", "created")}
elif args.skip_quick and prev:  # keep the quick builds' figures (and when they were measured)
    out = {k: v for k, v in prev.items() if k.startswith("quick_")}
    out.setdefault("quick_created", prev.get("created"))

if not args.skip_quick:
    with tempfile.TemporaryDirectory() as cache:  # from scratch: no cached teacher, no build folder
        shutil.rmtree(builds / "bench-quick", ignore_errors=True)
        dt, _ = edgekd("build", "--target", "cpu", "--quick", "--quiet", "--out", str(builds / "bench-quick"),
                       env={"EDGEKD_CACHE": cache})
        shutil.rmtree(builds / "bench-quick", ignore_errors=True)
        dt_q, _ = edgekd("build", "--target", "cpu", "--quick", "--quiet", "--out", str(builds / "bench-quick"),
                         env={"EDGEKD_CACHE": cache})
    out["quick_from_scratch_s"] = round(dt, 1)
    out["quick_teacher_cached_s"] = round(dt_q, 1)
    out["quick_goal_s"] = 180

if args.skip_full:
    write("spine", out)
    raise SystemExit(0)

full = builds / "bench-full"
shutil.rmtree(full, ignore_errors=True)
# an empty EDGEKD_CACHE: what `make demo` costs on a fresh clone (the shipped teacher is verified and measured,
# its logit cache written) -- nothing from earlier builds is reused
with tempfile.TemporaryDirectory() as cache:
    dt, _ = edgekd("build", "--target", "cpu", "--quiet", "--out", str(full), env={"EDGEKD_CACHE": cache})
rep = report(full)
t_res = json.loads((full / "teacher" / "result.json").read_text())
stages = {s["stage"]: s["seconds"] for s in json.loads((full / "run.json").read_text())["stages"]}
out["full_build_s"] = round(dt, 1)
out["full_build_teacher_cached"] = bool(t_res["metrics"].get("cached"))
# shipped: the teacher came from models/weights/ (measured, not trained; make demo's case); trained: this build
out["full_build_teacher_origin"] = t_res["metrics"].get("origin", "trained")
out["full_build_goal_s"] = 900
out["stage_seconds"] = stages
if out["full_build_teacher_origin"] != "shipped":  # a shipped teacher's train_seconds is 0: no training time to report
    out["teacher_training_s_one_time"] = round(t_res["metrics"]["train_seconds"], 1)
c = rep["comparison"]
teacher = rep["models"][0]
sel = student(rep, rep["selected"].split("/", 1)[1])
out["headline"] = {
    "selected": rep["selected"], "objective": (rep.get("selection") or {}).get("objective"), "teacher_accuracy": teacher["accuracy"], "student_accuracy": sel["accuracy"],
    "teacher_p50_ms_torch_b1_1thread": teacher["latency_ms"]["p50"], "student_p50_ms_ort_b1_1thread": sel["latency_ms"]["p50"],
    "speedup_p50": c["speedup_p50"], "size_ratio": c["size_ratio"], "accuracy_retention": c["accuracy_retention"],
    "peak_rss_ratio": c["peak_rss_ratio"], "energy_ratio": c["energy_ratio"],
    "energy_method": sel["energy"]["method"], "params_ratio": c["params_ratio"],
    "goals": {"speedup_p50": 10, "size_ratio": 40, "accuracy_retention": 0.97, "teacher_accuracy": 0.91},
}
out["candidates"] = [{k: x[k] for k in ("variant", "accuracy", "size_bytes", "status")} | {"p50_ms": (x["latency_ms"] or {}).get("p50")}
                     for x in rep["candidates"]]

if not args.skip_kd:
    # The build's own labels-only control (distill.control, on for full builds): the same student, data, epochs
    # and seed, only the loss differs; both fp32 ONNX in onnxruntime on the test split.
    ctrl = (rep.get("training") or {}).get("control") or {}
    if ctrl.get("accuracy") is not None:
        kd_acc = student(rep, "fp32")["accuracy"]
        out["kd_vs_labels_only"] = {"kd_student_fp32_accuracy": kd_acc, "labels_only_student_fp32_accuracy": ctrl["accuracy"],
                                    "gain_points": c.get("kd_gain_points"), "goal_points": 0.5, "seeds": 1,
                                    "source": "the full build's control arm (report.json training.control)"}
write("spine", out)
