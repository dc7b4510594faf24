"""Quick builds of every shipped recipe (and one bring-your-own card) for a refactor's before/after check.

    PYTHONPATH=CHECKOUT python benchmarks/bench_house.py --out DIR [--only NAME ...]
    python benchmarks/bench_house.py --diff BEFORE_DIR AFTER_DIR --json benchmarks/results/house_refactor.json

The first form builds with whichever edgekd PYTHONPATH imports (a worktree at the old commit, then the new
one), each build with `--quick --set quantize.objective=size` so the selection does not depend on timing
noise, and a separate EDGEKD_CACHE per output folder. The second form compares the report.json of each
build with benchmarks/report_diff.py (keys, model rows, selection) and the accuracies of the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = {  # name: (recipe, target)
    "digits-mlp-cpu": ("digits-mlp", "cpu"),
    "fashion-cnn-cpu": ("fashion-cnn", "cpu"),
    "fashion-cnn-mobile": ("fashion-cnn", "mobile"),
    "fashion-cnn-ascend-310p": ("fashion-cnn", "ascend-310p"),
    "minilm-sentiment-cpu": ("minilm-sentiment", "cpu"),
    "smollm2-seqkd-cpu": ("smollm2-seqkd", "cpu"),
    "byo-factory-cpu": ("BYO", "cpu"),
}


def byo_folder(root: Path) -> Path:
    """The user's folder of tests/e2e/test_byo_cli.py: mymodels.py, photos/, a teacher trained for seconds."""
    sys.path.insert(0, str(HERE.parent))
    from tests.e2e import test_byo_cli as t

    class _Factory:  # the fixture's tmp_path_factory, pointed at our folder
        def mktemp(self, name: str) -> Path:
            p = root / name
            p.mkdir(parents=True, exist_ok=True)
            return p

    folder = t.byo.__wrapped__(_Factory()) if hasattr(t.byo, "__wrapped__") else None
    if folder is None:
        raise SystemExit("tests.e2e.test_byo_cli.byo is not a plain fixture any more")
    # the test's card, with its factory teacher and its trained weights
    (folder / "card.yaml").write_text(t.CARD.format(teacher="  factory: mymodels:build_teacher\n  weights: teacher.pt",
                                                    distill_extra=""))
    return folder


def build(name: str, out: Path) -> dict:
    recipe, target = BUILDS[name]
    env = {**os.environ, "EDGEKD_CACHE": str(out / ".cache")}
    cwd = None
    if recipe == "BYO":
        cwd = byo_folder(out / ".byo")
        recipe = "card.yaml"
    cmd = [sys.executable, "-m", "edgekd", "build", "--target", target, "--recipe", recipe, "--quick", "--quiet",
           "--set", "quantize.objective=size", "--out", str(out / name)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return {"cmd": " ".join(cmd[1:]), "rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "stderr_tail": r.stderr[-1500:] if r.returncode else ""}


def compare(before: Path, after: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from report_diff import diff

    out = {}
    for name in BUILDS:
        a, b = before / name / "report" / "report.json", after / name / "report" / "report.json"
        if not (a.is_file() and b.is_file()):
            out[name] = {"missing": [str(p) for p in (a, b) if not p.is_file()]}
            continue
        old, new = json.loads(a.read_text()), json.loads(b.read_text())
        d = diff(old, new)
        acc = {f"{m['role']}/{m['variant']}": m.get("accuracy") for m in old.get("models", [])}
        acc_new = {f"{m['role']}/{m['variant']}": m.get("accuracy") for m in new.get("models", [])}
        d["accuracy_old"], d["accuracy_new"] = acc, acc_new
        d["same_accuracies"] = all(acc.get(k) is None or acc_new.get(k) is not None and abs(acc[k] - acc_new[k]) < 1e-9
                                   for k in acc)
        out[name] = {k: v for k, v in d.items() if k not in ("rows_old", "rows_new")} | {"rows": d["rows_new"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", nargs="*", default=list(BUILDS))
    ap.add_argument("--diff", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.diff:
        res = compare(*a.diff)
        if a.json:
            a.json.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps({k: {x: v.get(x) for x in ("removed_keys", "same_rows", "same_selection", "same_accuracies",
                                                      "missing")} for k, v in res.items()}, indent=1))
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name in a.only:
        runs[name] = build(name, a.out)
        print(name, runs[name]["rc"], runs[name]["seconds"], flush=True)
    (a.out / "runs.json").write_text(json.dumps(runs, indent=2))
    return 0 if all(r["rc"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
