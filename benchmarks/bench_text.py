"""minilm-sentiment: the full build's table, and latency at sequence 64 and 128.

    python benchmarks/bench_text.py                      # full recipe -> results/text.json
    python benchmarks/bench_text.py --quick              # smoke run  -> results/text-quick.json
    python benchmarks/bench_text.py --build DIR --skip-build   # re-measure an existing build

The build itself profiles at the recipe's max_length (64). The sequence sweep re-profiles the
teacher (PyTorch eager and ONNX) and the student (fp32 and the selected variant) with the same
profiler and the cpu card's settings, on the test snippets right-padded (or cut) to each length:
the graphs compute every position, so latency depends on the length, not on the words.
Goal (issue #7): student >= 97% of the teacher's accuracy at >= 5x its speed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, edgekd, report, write

sys.path.insert(0, str(ROOT))


def resize(ids: np.ndarray, length: int) -> np.ndarray:
    """Right-pad with 0 ([PAD]) or cut to `length`, keeping [SEP] last where a row is cut."""
    if ids.shape[1] >= length:
        out = ids[:, :length].copy()
        cut = ids[:, length:].any(axis=1)
        out[cut, -1] = 102
        return out
    return np.pad(ids, ((0, 0), (0, length - ids.shape[1])))


def seq_sweep(build: Path, lengths: list[int], repeats: int) -> dict:
    from edgekd.cards import load_recipe, load_target
    from edgekd.profile.runner import interleaved_profile
    from edgekd.profile.spec import ProfileSettings, ProfileSpec

    rep = report(build)
    recipe = load_recipe(rep["recipe"])
    target = load_target("cpu")
    inputs = np.load(build / "profile" / "inputs.npy")
    selected = str(rep["selected"]).split("/", 1)[-1]  # "student/int8-dynamic" -> "int8-dynamic"
    cands = {c["variant"]: c for c in rep["candidates"]}
    work = build / "bench-seq"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out: dict = {}
    for L in lengths:
        f = work / f"inputs-{L}.npy"
        np.save(f, resize(inputs, L))
        common = ProfileSpec(**ProfileSettings.from_card(target, target.device).model_dump(), kind="onnx",
                             input_shape=[1, L], input_file=str(f)).with_model(batch_sweep=[1], throughput_batch=1)
        specs = {"teacher/fp32-torch": common.with_model(kind="torch", path=str(build / "teacher" / "teacher.pt"),
                                                         arch=recipe.teacher.arch, kwargs=recipe.teacher.kwargs,
                                                         input_dtype="int64"),
                 "teacher/fp32": common.with_model(path=str(build / "export" / "teacher.onnx"))}
        for v in dict.fromkeys(["fp32", selected]):
            specs[f"student/{v}"] = common.with_model(path=str(build / cands[v]["path"]))
        print(f"  sequence {L}: profiling {', '.join(specs)}", flush=True)
        res = interleaved_profile(specs, repeats=repeats, workdir=work / f"logs-{L}")
        t_torch = res["teacher/fp32-torch"]["latency_ms"]["p50"]
        t_onnx = res["teacher/fp32"]["latency_ms"]["p50"]
        out[str(L)] = {name: {"p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                              "n": r["latency_ms"]["n"], "spread": r.get("spread"), "noisy": r.get("noisy"),
                              "speedup_vs_teacher_torch": t_torch / r["latency_ms"]["p50"],
                              "speedup_vs_teacher_onnx": t_onnx / r["latency_ms"]["p50"]}
                       for name, r in res.items()}
    shutil.rmtree(work, ignore_errors=True)
    return {"selected": selected, "lengths": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", type=Path, help="build folder (default builds/bench-minilm[-quick])")
    ap.add_argument("--skip-build", action="store_true", help="re-measure an existing build")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the build")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    build = args.build or ROOT / "builds" / ("bench-minilm-quick" if args.quick else "bench-minilm")
    result: dict = {"recipe": "minilm-sentiment", "quick": args.quick, "sets": args.set}
    if not args.skip_build:
        cmd = ["build", "--recipe", "minilm-sentiment", "--target", "cpu", "--out", str(build), "--quiet"]
        cmd += ["--quick"] if args.quick else []
        for s in args.set:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        edgekd(*cmd)
        result["build_wall_s"] = round(time.perf_counter() - t0, 1)
    run = json.loads((build / "run.json").read_text())
    result["stage_seconds"] = {s["stage"]: s["seconds"] for s in run["stages"]}
    rep = report(build)
    t = json.loads((build / "teacher" / "result.json").read_text())["metrics"]
    d = json.loads((build / "distill" / "result.json").read_text())["metrics"]
    result["teacher"] = {k: t.get(k) for k in ("params", "val_accuracy", "test_accuracy", "train_seconds", "cached")}
    result["student"] = {k: d.get(k) for k in ("params", "val_accuracy", "test_accuracy", "train_seconds", "best_epoch")}
    result["distill_history"] = d.get("history")
    result["candidates"] = [{k: c.get(k) for k in ("variant", "status", "accuracy", "val_accuracy", "latency_ms",
                                                  "size_bytes")} for c in rep["candidates"]]
    result["comparison"] = rep["comparison"]
    result["sequence_sweep"] = seq_sweep(build, args.lengths, args.repeats)
    sel = result["sequence_sweep"]["selected"]
    acc_t = result["teacher"]["test_accuracy"]
    acc_s = next(c for c in rep["candidates"] if c["variant"] == sel).get("accuracy")
    result["goal"] = {"retention": acc_s / acc_t if acc_t else None, "retention_goal": 0.97,
                      "speedup_vs_teacher_torch": {L: v[f"student/{sel}"]["speedup_vs_teacher_torch"]
                                                   for L, v in result["sequence_sweep"]["lengths"].items()},
                      "speedup_goal": 5.0}
    write("text-quick" if args.quick else "text", result)


if __name__ == "__main__":
    main()
