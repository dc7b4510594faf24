"""Quantization that is measured (issue: quantize). Writes benchmarks/results/NAME.json (default quantize.json).

1. The build's candidate table (variant, test/val accuracy, p50, size, status, kept_fp32_nodes) and the check that
   the selection follows its objective: with `latency`, "the selected variant is never slower than fp32 on the same
   runtime" (from the build's own profile, and again from this script's re-measurement); with `size` (fashion-cnn's
   card), the selected is the smallest candidate within the budget, and its time against fp32 is reported.
2. Peers on the SAME student ONNX (DIR/export/student.onnx): Optimum ORTQuantizer dynamic INT8 with the avx2 and
   avx512_vnni AutoQuantizationConfigs (per_channel off/on), and NNCF `nncf.quantize` with defaults. Every peer,
   edgekd's selected artifact and edgekd's fp32 are timed by the SAME profiler (edgekd.profile.runner.
   interleaved_profile: one fresh process per model and repeat, models interleaved, 1 thread) and scored by
   onnxruntime on the build's own test split.

    python benchmarks/bench_quantize.py [--build DIR] [--recipe fashion-cnn] [--quick] [--repeats 3]
    python benchmarks/bench_quantize.py --smoke          # digits-mlp --quick build, short profiling
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from _common import ROOT, edgekd, report, write

# Tiny profiling for smoke runs: proves the script works, numbers mean little.
SMOKE_PROFILE = {"warmup_runs": 5, "warmup_seconds": 0.0, "min_runs": 200, "min_seconds": 0.0, "max_seconds": 0.5,
                 "batch_sweep": [1], "throughput_batch": 1}
SMOKE_SETS = ["target.profile.min_runs=10", "target.profile.min_seconds=0", "target.profile.repeats=1",
              "target.profile.max_seconds=1", "target.profile.warmup_runs=1", "target.profile.warmup_seconds=0",
              "target.profile.batch_sweep=[1]"]


def cpu_flags() -> dict:
    """The ISA features that decide which INT8 kernels onnxruntime can use (VNNI: u8s8 without saturation)."""
    from edgekd.hostinfo import cpu_info

    info = cpu_info()
    return {"model": info["model"], **info["flags"]}


def ensure_build(args: argparse.Namespace) -> Path:
    build = Path(args.build) if args.build else ROOT / "builds" / f"bench-quantize-{args.recipe}"
    if (build / "report" / "report.json").is_file():
        return build
    cmd = ["build", "--target", "cpu", "--recipe", args.recipe, "--quiet", "--out", str(build)]
    if args.quick or args.smoke:
        cmd.append("--quick")
    for s in (SMOKE_SETS if args.smoke else []) + list(args.set or []):
        cmd += ["--set", s]
    dt, _ = edgekd(*cmd)
    print(f"built {build} in {dt:.1f} s")
    return build


def candidate_table(rep: dict) -> tuple[list[dict], dict]:
    rows = []
    for c in rep["candidates"]:
        lat = c.get("latency_ms") or {}
        rows.append({"variant": c["variant"], "test_accuracy": c.get("accuracy"), "val_accuracy": c.get("val_accuracy"),
                     "p50_ms": lat.get("p50"), "size_bytes": c.get("size_bytes"), "status": c.get("status"),
                     "kept_fp32_nodes": c.get("kept_fp32_nodes") or [], "error": c.get("error")})
    sel = rep["selected"].split("/", 1)[1]
    by = {r["variant"]: r for r in rows}
    fp32_p50, sel_p50 = by["fp32"]["p50_ms"], by[sel]["p50_ms"]
    objective = (rep.get("selection") or {}).get("objective") or "latency"
    check = {"objective": objective, "selected": sel, "fp32_p50_ms": fp32_p50, "selected_p50_ms": sel_p50,
             "selected_not_slower_than_fp32": (fp32_p50 is not None and sel_p50 is not None and sel_p50 <= fp32_p50)}
    if objective == "size":  # the rule is "smallest within the budget": the selected may be slower, never larger
        eligible = [r["size_bytes"] for r in rows if r["status"] in ("selected", "kept") and r["size_bytes"]]
        check["selected_smallest_within_budget"] = by[sel]["size_bytes"] == min(eligible, default=None)
    check["follows_objective"] = check["selected_smallest_within_budget" if objective == "size"
                                       else "selected_not_slower_than_fp32"]
    return rows, check


def make_peers(fp32: Path, work: Path, calib: np.ndarray, per_channel: list[bool]) -> dict[str, dict]:
    """Quantize the same fp32 ONNX with Optimum's ORTQuantizer and NNCF; returns name -> {path, info|error}."""
    peers: dict[str, dict] = {}
    src = work / "optimum-src"
    src.mkdir(parents=True)
    # ORTQuantizer.from_pretrained(dir, file_name=...) takes a bare ONNX file; it tries AutoConfig on the folder,
    # logs a warning when there is no config.json and goes on with config=None (no config.json is needed).
    shutil.copy2(fp32, src / "student.onnx")
    try:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError as e:
        for pc in per_channel:
            for arch in ("avx2", "avx512_vnni"):
                peers[f"optimum-{arch}-dynamic{'-pc' if pc else ''}"] = {"error": f"optimum unavailable: {e}"}
    else:
        for arch in ("avx2", "avx512_vnni"):
            for pc in per_channel:
                name = f"optimum-{arch}-dynamic{'-pc' if pc else ''}"
                try:
                    cfg = getattr(AutoQuantizationConfig, arch)(is_static=False, per_channel=pc)
                    q = ORTQuantizer.from_pretrained(src, file_name="student.onnx")
                    out = work / name
                    q.quantize(quantization_config=cfg, save_dir=out)
                    path = out / "student_quantized.onnx"
                    peers[name] = {"path": path, "tool": "optimum.onnxruntime.ORTQuantizer",
                                   "config": f"AutoQuantizationConfig.{arch}(is_static=False, per_channel={pc})",
                                   "quant": str(cfg), "needed_config_json": False}
                except Exception as e:  # a peer failing is a result to record, not a reason to stop
                    peers[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    name = "nncf-defaults"
    try:
        import nncf
        import onnx

        from edgekd.runtimes.ort import input_spec

        inp = input_spec(fp32).name
        ds = nncf.Dataset([{inp: calib[i:i + 1]} for i in range(len(calib))])
        qm = nncf.quantize(onnx.load(str(fp32)), ds)
        path = work / "nncf" / "student_nncf.onnx"
        path.parent.mkdir()
        onnx.save(qm, str(path))
        peers[name] = {"path": path, "tool": f"nncf {nncf.__version__}",
                       "config": f"nncf.quantize(model, nncf.Dataset({len(calib)} samples)) with defaults"}
    except Exception as e:  # recorded, see above
        peers[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    return peers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="existing build folder (default builds/bench-quantize-RECIPE, built if absent)")
    ap.add_argument("--recipe", default=None, help="recipe to build when --build has no report (default fashion-cnn; "
                                                   "digits-mlp with --smoke)")
    ap.add_argument("--quick", action="store_true", help="build with --quick when a build is needed")
    ap.add_argument("--set", action="append", help="extra --set for the build (when one is needed)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved profiling repeats")
    ap.add_argument("--per-channel", choices=["both", "true", "false"], default="both")
    ap.add_argument("--smoke", action="store_true", help="digits-mlp --quick build, short profiling")
    ap.add_argument("--keep", action="store_true", help="keep the peers' ONNX files (under builds/bench-quantize-peers)")
    ap.add_argument("--out-name", default=None, help="results file name (default quantize, quantize-smoke)")
    args = ap.parse_args()
    args.recipe = args.recipe or ("digits-mlp" if args.smoke else "fashion-cnn")

    from edgekd.cards import load_recipe, load_target
    from edgekd.data import load
    from edgekd.pipeline import load_run
    from edgekd.profile.runner import interleaved_profile
    from edgekd.runtimes.ort import accuracy as evaluate_onnx

    build = ensure_build(args)
    rep = report(build)
    run = load_run(build)
    rows, check = candidate_table(rep)
    out: dict = {"build": str(build), "recipe": run.get("recipe"), "quick": run.get("quick", False),
                 "smoke": args.smoke, "cpu_flags": cpu_flags(), "candidates": rows, "build_profile_check": check}

    # The build's own data, re-created from the recipe and the build's overrides.
    recipe = load_recipe(run["recipe"], run.get("overrides", {}), run.get("quick", False))
    target = load_target(run["target"], run.get("overrides", {}), run.get("quick", False))
    s = load(recipe.data)
    rng = np.random.default_rng(recipe.data.seed)  # same calibration draw as edgekd's quantize stage
    calib = s.x_train[rng.permutation(len(s.x_train))[: recipe.quantize.calibration_samples]]

    fp32 = build / "export" / "student.onnx"
    sel_variant = check["selected"]
    sel_path = build / "quantize" / "candidates" / f"{sel_variant}.onnx"
    pcs = {"both": [False, True], "true": [True], "false": [False]}[args.per_channel]
    work = Path(tempfile.mkdtemp(prefix="bench-quantize-peers-", dir=ROOT / "builds"))
    try:
        peers = make_peers(fp32, work, calib, pcs)
        models = {"edgekd/fp32": fp32, f"edgekd/{sel_variant}": sel_path}
        models.update({f"peer/{n}": p["path"] for n, p in peers.items() if "path" in p})

        p = target.profile.model_dump()
        if args.smoke:
            p.update(SMOKE_PROFILE)
        input_shape = json.loads((build / "export" / "result.json").read_text())["metrics"]["input_shape"]
        common = {"input_shape": input_shape, "input_file": str(build / "profile" / "inputs.npy"), "threads": 1,
                  "providers": ["CPUExecutionProvider"], "warmup_runs": p["warmup_runs"],
                  "warmup_seconds": p["warmup_seconds"], "min_runs": p["min_runs"], "min_seconds": p["min_seconds"],
                  "max_seconds": p["max_seconds"], "batch_sweep": p["batch_sweep"],
                  "throughput_batch": p["throughput_batch"], "energy": "none", "seed": recipe.data.seed}
        specs = {name: {**common, "kind": "onnx", "path": str(path)} for name, path in models.items()}
        prof = interleaved_profile(specs, repeats=args.repeats, workdir=work / "logs")

        measured: dict[str, dict] = {}
        for name, path in models.items():
            r = prof[name]
            measured[name] = {"path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
                              "test_accuracy": evaluate_onnx(path, s.x_test, s.y_test),
                              "val_accuracy": evaluate_onnx(path, s.x_val, s.y_val),
                              "p50_ms": r["latency_ms"]["p50"], "p90_ms": r["latency_ms"]["p90"],
                              "repeat_p50s_ms": r["repeats"], "spread": r["spread"], "noisy": r["noisy"],
                              "size_bytes": path.stat().st_size}
        for name, p_ in peers.items():
            key = f"peer/{name}"
            info = {k: v for k, v in p_.items() if k != "path"}
            measured[key] = {**measured.get(key, {}), **info}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    e = measured[f"edgekd/{sel_variant}"]
    f = measured["edgekd/fp32"]
    out["remeasured_check"] = {"objective": check["objective"], "selected": sel_variant,
                               "fp32_size_bytes": f["size_bytes"], "selected_size_bytes": e["size_bytes"],
                               "fp32_p50_ms": f["p50_ms"], "selected_p50_ms": e["p50_ms"],
                               "selected_p50_over_fp32_p50": e["p50_ms"] / f["p50_ms"],
                               "selected_not_slower_than_fp32": e["p50_ms"] <= f["p50_ms"],
                               # repeat-to-repeat spread is the noise floor of one comparison
                               "selected_not_slower_within_noise":
                                   e["p50_ms"] <= f["p50_ms"] * (1 + max(e["spread"], f["spread"]))}
    comparisons = {}
    for name, m in measured.items():
        if not name.startswith("peer/") or "p50_ms" not in m:
            continue
        noise = max(e["spread"], m["spread"])
        fast = e["p50_ms"] <= m["p50_ms"]
        fast_noise = e["p50_ms"] <= m["p50_ms"] * (1 + noise)
        acc_ok = e["test_accuracy"] >= m["test_accuracy"]
        comparisons[name] = {"peer_p50_over_edgekd_p50": m["p50_ms"] / e["p50_ms"],
                             "accuracy_points_edgekd_minus_peer": round(100 * (e["test_accuracy"] - m["test_accuracy"]), 3),
                             "size_ratio_peer_over_edgekd": m["size_bytes"] / e["size_bytes"],
                             "edgekd_at_least_as_fast": fast, "edgekd_at_least_as_fast_within_noise": fast_noise,
                             "edgekd_equal_or_better_accuracy": acc_ok,
                             "edgekd_at_least_as_fast_at_equal_or_better_accuracy": fast and acc_ok,
                             "edgekd_at_least_as_fast_within_noise_at_equal_or_better_accuracy": fast_noise and acc_ok}
    out["measured"] = measured
    out["vs_peers"] = comparisons
    ok = [c["edgekd_at_least_as_fast_within_noise_at_equal_or_better_accuracy"] for c in comparisons.values()]
    out["summary"] = {"peers_measured": len(comparisons), "peers_failed": [n for n, m in measured.items()
                                                                           if n.startswith("peer/") and "error" in m],
                      "edgekd_wins_or_ties_all_within_noise": bool(ok) and all(ok),
                      "median_peer_speed_ratio": statistics.median([c["peer_p50_over_edgekd_p50"] for c in comparisons.values()])
                      if comparisons else None}
    out["settings"] = {"threads": 1, "repeats": args.repeats, "profile": {k: common[k] for k in (
        "warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_seconds", "batch_sweep", "throughput_batch")},
        "test_samples": int(len(s.x_test)), "calibration_samples": int(len(calib)),
        "timing_inputs": "DIR/profile/inputs.npy (real test samples, batch 1)"}
    write(args.out_name or ("quantize-smoke" if args.smoke else "quantize"), out)


if __name__ == "__main__":
    main()
