"""The GPU host's run for issue #28 (benchmarks/device_lm_curve.sh): what it asks python to run, phase by phase, with a
stub for python (no GPU, no teacher here): its phases, defaults and arguments, and a clear stop without a grown set."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUB = """#!/bin/sh
echo "$*" >> "$LOG"
prev=""
for a in "$@"; do
  if [ "$prev" = "--out" ]; then echo '{"prompt": "x"}' > "$a"; fi
  if [ "$prev" = "--results" ]; then mkdir -p benchmarks/results; echo '{}' > "benchmarks/results/$a.json"; fi
  prev="$a"
done
"""


def _run(tmp_path, *args, **extra_env):
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "device_lm_curve.sh", repo / "benchmarks")
    py = tmp_path / "py"
    py.write_text(STUB)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log.txt"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PY": str(py), "LOG": str(log), "OUT": str(tmp_path / "out"),
           "EDGEKD_BENCH_WORK": str(tmp_path / "work"), "EDGEKD_CACHE": str(tmp_path / "cache"), **extra_env}
    r = subprocess.run(["bash", "benchmarks/device_lm_curve.sh", *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=60)
    calls = [ln.split() for ln in log.read_text().splitlines()] if log.is_file() else []
    return r, [c for c in calls if c and c[0].startswith("benchmarks/")], tmp_path / "out"


def _arg(call, flag):
    return call[call.index(flag) + 1]


def test_the_whole_run_grows_then_draws_the_curve_on_the_grown_set(tmp_path):
    r, calls, out = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    grow, curve = calls
    assert grow[0] == "benchmarks/grow_llm_prompts.py" and _arg(grow, "--samples") == "8"
    assert _arg(grow, "--results") == "prompts_grown-cuda" and _arg(grow, "--out") == str(out / "prompts-grown-x8.jsonl")
    assert curve[0] == "benchmarks/bench_lm_curve.py" and _arg(curve, "--prompts") == _arg(grow, "--out")
    assert _arg(curve, "--epochs") == "4" and _arg(curve, "--results") == "lm_curve-cuda"
    pts = curve[curve.index("--points") + 1:curve.index("--epochs")]
    assert pts == ["500", "1000", "2000", "0"]
    assert (out / "lm_curve-cuda.json").is_file() and (out / "prompts_grown-cuda.json").is_file()
    assert (out / "env.txt").is_file()


def test_a_phase_alone_with_its_own_samples_epochs_and_points(tmp_path):
    r, calls, _ = _run(tmp_path, "grow", "3")
    assert r.returncode == 0 and [c[0] for c in calls] == ["benchmarks/grow_llm_prompts.py"]
    r, calls, _ = _run(tmp_path, "curve", "3", "2", "100", "0")
    assert r.returncode == 0, r.stderr
    (curve,) = calls
    assert _arg(curve, "--epochs") == "2" and curve[curve.index("--points") + 1:curve.index("--epochs")] == ["100", "0"]
    assert _arg(curve, "--prompts").endswith("prompts-grown-x3.jsonl")


def test_the_curve_without_a_grown_set_stops_with_exit_2(tmp_path):
    r, calls, _ = _run(tmp_path, "curve", "5")
    assert r.returncode == 2 and not calls and "run the grow phase first" in r.stdout


def test_sets_reach_every_curve_build_beside_the_gpu_batch(tmp_path):
    _run(tmp_path, "grow", "2")
    r, calls, _ = _run(tmp_path, "curve", "2", SETS="generate.train_samples=4 distill.epochs=1")
    assert r.returncode == 0, r.stderr
    (curve,) = calls
    sets = [curve[i + 1] for i, a in enumerate(curve) if a == "--set"]
    assert sets == ["generate.batch_size=64", "generate.train_samples=4", "distill.epochs=1"]
    r, calls, _ = _run(tmp_path, "curve", "2")  # no SETS: the GPU batch only
    assert [curve[i + 1] for curve in calls for i, a in enumerate(curve) if a == "--set"] == ["generate.batch_size=64"]
