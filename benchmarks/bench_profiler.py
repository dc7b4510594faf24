"""Reports you can trust (issue: profiler). Writes benchmarks/results/NAME.json (default profiler.json).

1. Agreement: for each ONNX file (default: a build's student fp32 and teacher ONNX), edgekd's profiler p50
   (edgekd.profile.runner.profile_model, 1 thread, the cpu target card's timing settings) against a plain independent
   loop in a fresh subprocess (its own onnxruntime session, intra_op_num_threads=1, 100 warm-up calls, 1000 timed
   calls, time.perf_counter per call, median). The two methods alternate, 3 rounds. Goal: ratio within 10%.
2. Stability: the spread of the profiler's 3 p50s, (max - min) / median. Goal: <= 5%.
Both methods feed the same batch-1 samples: the first 64 rows of DIR/profile/inputs.npy (real test samples).

    python benchmarks/bench_profiler.py [--build DIR | --onnx A.onnx B.onnx] [--recipe fashion-cnn] [--rounds 3]
    python benchmarks/bench_profiler.py --smoke        # digits-mlp --quick build, 1 s profiles
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import ROOT, edgekd, write

SMOKE_SETS = ["target.profile.min_runs=10", "target.profile.min_seconds=0", "target.profile.repeats=1",
              "target.profile.max_seconds=1", "target.profile.warmup_runs=1", "target.profile.warmup_seconds=0",
              "target.profile.batch_sweep=[1]"]

# The independent method: nothing from edgekd, only onnxruntime + numpy + perf_counter.
PLAIN_LOOP = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, inputs, warmup, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
pool = np.load(inputs).astype(np.float32)
xs = [np.ascontiguousarray(pool[i:i + 1]) for i in range(min(64, len(pool)))]
for i in range(warmup):
    sess.run(None, {name: xs[i % len(xs)]})
t = []
for i in range(runs):
    x = xs[i % len(xs)]
    t0 = time.perf_counter()
    sess.run(None, {name: x})
    t.append((time.perf_counter() - t0) * 1e3)
t.sort()
print(json.dumps({"median_ms": float(np.median(t)), "p90_ms": t[int(0.9 * (len(t) - 1))], "n": len(t),
                  "ort": ort.__version__}))
"""


def plain_loop(path: Path, inputs: Path, warmup: int, runs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", PLAIN_LOOP, str(path), str(inputs), str(warmup), str(runs)],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"plain timing loop failed on {path}:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_build(args: argparse.Namespace) -> Path:
    build = Path(args.build) if args.build else ROOT / "builds" / f"bench-profiler-{args.recipe}"
    if (build / "export" / "student.onnx").is_file() and (build / "profile" / "inputs.npy").is_file():
        return build
    cmd = ["build", "--target", "cpu", "--recipe", args.recipe, "--quiet", "--out", str(build),
           "--set", "quantize.candidates=[fp32]"]
    if args.quick or args.smoke:
        cmd.append("--quick")
    for s in SMOKE_SETS:  # the build's own profile is not used here: keep it short
        cmd += ["--set", s]
    dt, _ = edgekd(*cmd)
    print(f"built {build} in {dt:.1f} s")
    return build


def spread(values: list[float]) -> float:
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="build folder (default builds/bench-profiler-RECIPE, built if absent)")
    ap.add_argument("--recipe", default=None, help="recipe to build (default fashion-cnn; digits-mlp with --smoke)")
    ap.add_argument("--quick", action="store_true", help="build with --quick when a build is needed")
    ap.add_argument("--onnx", nargs="+", help="profile these ONNX files instead of a build's student/teacher")
    ap.add_argument("--inputs", help=".npy of samples [N, ...] (default: the build's profile/inputs.npy; "
                                     "with --onnx and no build: seeded random normal)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two methods (and profiler repeats)")
    ap.add_argument("--plain-warmup", type=int, default=100)
    ap.add_argument("--plain-runs", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="digits-mlp --quick build, 1 s profiles")
    ap.add_argument("--out-name", default=None, help="results file name (default profiler, profiler-smoke)")
    args = ap.parse_args()
    args.recipe = args.recipe or ("digits-mlp" if args.smoke else "fashion-cnn")

    from edgekd.cards import load_target
    from edgekd.profile.runner import profile_model
    from edgekd.runtimes.ort import input_spec

    tmp = Path(tempfile.mkdtemp(prefix="bench-profiler-"))
    if args.onnx:
        models = {Path(p).stem: Path(p).resolve() for p in args.onnx}
        build = Path(args.build) if args.build else None
    else:
        build = ensure_build(args)
        models = {"student-fp32": build / "export" / "student.onnx", "teacher-fp32": build / "export" / "teacher.onnx"}
    if args.inputs:
        inputs = Path(args.inputs)
    elif build is not None and (build / "profile" / "inputs.npy").is_file():
        inputs = build / "profile" / "inputs.npy"
    else:
        spec0 = input_spec(next(iter(models.values())))
        if any(d is None for d in spec0.dims[1:]):
            raise SystemExit("the model has symbolic non-batch dims: pass --inputs samples.npy")
        inputs = tmp / "inputs.npy"
        np.save(inputs, np.random.default_rng(0).standard_normal([64, *spec0.dims[1:]], dtype=np.float32))

    p = load_target("cpu").profile.model_dump()
    if args.smoke:
        p.update({"warmup_runs": 50, "warmup_seconds": 0.2, "min_runs": 1000, "min_seconds": 1.0, "max_seconds": 5.0})
    # p50 is measured before the throughput sweep; a single batch keeps each worker short
    p.update({"batch_sweep": [1], "throughput_batch": 1})
    per_sample = list(np.load(inputs, mmap_mode="r").shape[1:])
    results: dict[str, dict] = {}
    for name, path in models.items():
        spec = {"kind": "onnx", "path": str(path), "name": name, "input_shape": [1, *per_sample],
                "input_file": str(inputs), "threads": 1, "providers": ["CPUExecutionProvider"], "energy": "none",
                **{k: p[k] for k in ("warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_seconds",
                                     "batch_sweep", "throughput_batch")}}
        prof, plain, rounds = [], [], []
        for r in range(args.rounds):
            # alternate which method goes first, so a drift of the machine does not favour one
            order = ("profiler", "plain") if r % 2 == 0 else ("plain", "profiler")
            row: dict = {"round": r + 1, "first": order[0]}
            for method in order:
                if method == "profiler":
                    res = profile_model(spec, repeats=1, workdir=tmp / "logs")
                    row["profiler_p50_ms"] = res["latency_ms"]["p50"]
                    row["profiler_samples"] = res["samples"]
                    prof.append(res["latency_ms"]["p50"])
                else:
                    res = plain_loop(path, inputs, args.plain_warmup, args.plain_runs)
                    row["plain_median_ms"] = res["median_ms"]
                    plain.append(res["median_ms"])
            row["ratio_profiler_over_plain"] = row["profiler_p50_ms"] / row["plain_median_ms"]
            rounds.append(row)
            print(f"  {name} round {r + 1}: profiler {row['profiler_p50_ms']:.4f} ms, plain {row['plain_median_ms']:.4f} ms")
        ratio = statistics.median(prof) / statistics.median(plain)
        s_prof = spread(prof)
        results[name] = {
            "path": str(path), "size_bytes": path.stat().st_size,
            "profiler_p50_ms_median": statistics.median(prof), "plain_median_ms_median": statistics.median(plain),
            "ratio_profiler_over_plain": ratio, "agree_within_10pct": abs(ratio - 1) <= 0.10,
            "round_ratios": [x["ratio_profiler_over_plain"] for x in rounds],
            "median_round_ratio": statistics.median(x["ratio_profiler_over_plain"] for x in rounds),
            "all_rounds_within_10pct": all(abs(x["ratio_profiler_over_plain"] - 1) <= 0.10 for x in rounds),
            "profiler_spread": s_prof, "profiler_spread_within_5pct": s_prof <= 0.05,
            "plain_spread": spread(plain), "rounds": rounds}
    out = {"models": results, "smoke": args.smoke, "build": str(build) if build else None,
           "inputs": str(inputs), "goals": {"agreement": 0.10, "spread": 0.05},
           "all_agree_within_10pct": all(r["agree_within_10pct"] for r in results.values()),
           "all_spread_within_5pct": all(r["profiler_spread_within_5pct"] for r in results.values()),
           "settings": {"threads": 1, "rounds": args.rounds, "profiler": {k: p[k] for k in (
               "warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_seconds", "batch_sweep")},
               "plain": {"warmup": args.plain_warmup, "runs": args.plain_runs, "intra_op_num_threads": 1,
                         "timer": "time.perf_counter per call, median"},
               "samples_cycled": "first 64 rows of the inputs file, batch 1, both methods"}}
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    write(args.out_name or ("profiler-smoke" if args.smoke else "profiler"), out)


if __name__ == "__main__":
    main()
