"""Ship a build's trained teacher as weights beside its recipe card (a release step, not a benchmark).

    python benchmarks/ship_teacher.py BUILD_DIR models/weights/fashion-cnn-teacher.safetensors

BUILD_DIR is a full (not --quick) build of the recipe whose teacher stage trained the teacher with
the card's own `teacher.train` section (a card without `shipped`, or `--set teacher.retrain=true`).
The script reads BUILD_DIR/teacher/teacher.pt (the state dict the stage wrote; loaded with
weights_only=True), writes it as .safetensors (tensors only, no pickle), writes NAME.json beside it
(provenance: the recipe, the command, the edgekd version and git commit, the data fingerprint, the
teacher's val/test accuracy and training time as that build measured them), and prints the
`shipped:` lines to put under the card's `teacher:`. A teacher from shipped weights, a --quick
build or a build with --set overrides other than teacher.retrain is refused: the shipped file must
be what the card's `train` section makes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's edgekd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("dest", type=Path, help="the .safetensors file to write (e.g. models/weights/NAME.safetensors)")
    ap.add_argument("--commit", help="git commit of the (clean) checkout that ran the build; default: this checkout's HEAD")
    a = ap.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    run = json.loads((a.build_dir / "run.json").read_text())
    res = json.loads((a.build_dir / "teacher" / "result.json").read_text())
    m = res["metrics"]
    extra = {k: v for k, v in (run.get("overrides") or {}).items() if k != "teacher.retrain"}
    if run.get("quick") or extra:
        sys.exit(f"{a.build_dir} is a {'--quick ' if run.get('quick') else ''}build"
                 f"{' with --set ' + str(extra) if extra else ''}: ship a teacher trained by the card as written")
    if m.get("origin", "trained") != "trained" or m.get("given"):
        sys.exit(f"{a.build_dir}'s teacher was not trained by the card (origin: {m.get('origin')})")
    if a.dest.suffix != ".safetensors":
        sys.exit("write a .safetensors file (tensors only: nothing in it can run code when loaded)")
    state = torch.load(a.build_dir / "teacher" / res["outputs"]["model"], map_location="cpu", weights_only=True)
    a.dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(a.dest))
    digest = hashlib.sha256(a.dest.read_bytes()).hexdigest()
    commit = a.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                    check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = None
    command = ["edgekd", "build", "--target", run["target"], "--recipe", run["recipe"], "--set", "teacher.retrain=true",
               "--out", "builds/teacher"]
    provenance = {
        "file": a.dest.name, "sha256": digest, "recipe": run.get("recipe_name"),
        "reproduce": " ".join(shlex.quote(x) for x in command)
                     + f" && python benchmarks/ship_teacher.py builds/teacher {a.dest.as_posix()}",
        "built_with": {"edgekd_version": run.get("edgekd_version"), "git_commit": commit,
                       "torch": torch.__version__, "build_started": run.get("started")},
        "teacher_stage": {"data_sha256": res["config"].get("data_sha256"), "cache_key": m.get("cache_key"),
                          "teacher_pt_sha256": next(iter(res["sha256"].values()), None)},
        "measured": {k: m.get(k) for k in ("params", "val_accuracy", "test_accuracy", "best_epoch", "train_seconds")},
        "epochs_run": len(m.get("history") or []),
    }
    a.dest.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))
    from edgekd.cards import card_file

    rel = os.path.relpath(a.dest.resolve(), card_file(run["recipe"]).resolve().parent)  # shipped.path is card-relative
    print(f"\nunder the teacher of {card_file(run['recipe'])}:\n  shipped: {{path: {rel}, sha256: {digest}}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
