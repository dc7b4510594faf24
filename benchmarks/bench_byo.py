"""Bring your own model, as a user does it: a torchvision ResNet-18 the user trained on their own
image folder, distilled by `edgekd init` + `edgekd build` for the cpu and mobile targets.

    python benchmarks/bench_byo.py                        # -> results/byo.json (about 30-40 min on 2 cores)
    python benchmarks/bench_byo.py --train-per-class 50 --test-per-class 20 --teacher-epochs 1 \
        --set distill.epochs=1 --targets cpu --quick      # smoke run -> results/byo-smoke.json

1. The user's folder: PNGs written from the offline Fashion-MNIST (Debian dataset-fashion-mnist),
   `photos/train/<class>/` and `photos/test/<class>/`, a seeded balanced subset (sizes in the JSON).
   Grayscale, 28x28, as the dataset is: the teacher reads them as RGB (torchvision's ImageFolder
   does), and `edgekd init` sees the teacher's 3-channel stem and writes `channels: 3`.
2. The user's teacher: torchvision ResNet-18 (num_classes=10), trained from random weights in a
   plain user-side loop (ImageFolder + ToTensor, Adam): no pretrained hub weights are reachable
   offline, so it is not fine-tuned from ImageNet. Its state dict is saved as teacher.pt.
3. `edgekd init --teacher torchvision:resnet18 --teacher-kwargs '{num_classes: 10}' --weights
   teacher.pt --data photos --student-kwargs ...` writes the card (the default zoo student, small_cnn, widened);
   `edgekd build --target cpu|mobile --recipe card.yaml` builds it unchanged (teacher given).

Recorded: teacher vs student accuracy and retention, latency (the student's selected artifact in
onnxruntime vs the teacher in PyTorch, 1 thread, batch 1, on this host, labelled), size, params
ratio, each stage's wall time (run.json) and each build's wall time. Goals (issue #16): retention
>= 97%, >= 10x faster than the teacher's PyTorch, whole build (teacher given) <= 20 min on 2 cores.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, write

sys.path.insert(0, str(ROOT))

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FMNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / f"{prefix}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def write_photos(root: Path, per_class: dict[str, int], seed: int, size: int | None = None) -> dict[str, int]:
    """photos/<split>/<class>/<i>.png, a seeded balanced subset of each official split (`size`: upscaled to
    size x size RGB, as a camera's crops would be; else the 28x28 grayscale originals)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in per_class.items():
        x, y = read_idx(split)
        for k, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            idx = rng.permutation(np.flatnonzero(y == k))[:n]
            for i in idx:
                img = Image.fromarray(x[i], "L")
                if size is not None:
                    img = img.resize((size, size), Image.BILINEAR).convert("RGB")
                img.save(d / f"{i:05d}.png")
        counts[split] = n * len(CLASSES)
    return counts


def train_teacher(photos: Path, out: Path, epochs: int, batch: int, lr: float, seed: int) -> dict:
    """The user's own training loop: nothing from edgekd but the torchvision import (see below)."""
    import torch

    # Beside the CPU torch wheel, the PyPI torchvision 0.28 wheel (a CUDA build) fails to import on its
    # own; edgekd's import makes it work (a user with PyTorch's CPU build of torchvision needs nothing).
    from edgekd.zoo.vision import import_torchvision

    tv = import_torchvision()
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    tf = transforms.ToTensor()  # ImageFolder opens every image as RGB: pixels in [0, 1], 3 channels
    train = datasets.ImageFolder(str(photos / "train"), transform=tf)
    test = datasets.ImageFolder(str(photos / "test"), transform=tf)
    assert train.classes == sorted(CLASSES)
    train_dl = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True)
    test_dl = torch.utils.data.DataLoader(test, batch_size=256)
    model = tv.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(train_dl))
    history = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        for xb, yb in train_dl:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test_dl:
                correct += int((model(xb).argmax(1) == yb).sum())
        history.append({"epoch": ep + 1, "loss": float(loss), "test_accuracy": correct / len(test)})
        print(f"  teacher epoch {ep + 1}/{epochs}: test accuracy {correct / len(test):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    torch.save(model.state_dict(), out)
    return {"arch": "torchvision resnet18", "torchvision": tv.__version__, "params": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "batch_size": batch, "lr": lr, "optimizer": "Adam + OneCycleLR", "init": "random (no hub weights offline)",
            "train_seconds": time.perf_counter() - t0, "test_accuracy_user_side": history[-1]["test_accuracy"], "history": history}


def run(work: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """`edgekd ARGS` from the user's folder, with this checkout's edgekd and a cache of its own."""
    env = {**os.environ, "EDGEKD_CACHE": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=work, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"edgekd {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dt, r


def summarize(build: Path, wall: float) -> dict:
    rep = json.loads((build / "report" / "report.json").read_text())
    runj = json.loads((build / "run.json").read_text())
    sel = next(m for m in rep["models"] if f"{m['role']}/{m['variant']}" == rep["selected"])
    t_torch = next(m for m in rep["models"] if m["role"] == "teacher" and m["variant"] == "fp32-torch")
    c = rep["comparison"]
    rows = [{k: m.get(k) for k in ("role", "variant", "format", "runtime", "params", "size_bytes", "accuracy", "measured_on")}
            | {"p50_ms": (m.get("latency_ms") or {}).get("p50")} for m in rep["models"]]
    return {
        "selected": rep["selected"], "teacher_accuracy": t_torch["accuracy"], "student_accuracy": sel["accuracy"],
        "accuracy_retention": c["accuracy_retention"], "teacher_p50_ms_torch": t_torch["latency_ms"]["p50"],
        "student_p50_ms": sel["latency_ms"]["p50"], "student_runtime": sel.get("runtime"), "student_format": sel.get("format"),
        "speedup_p50": c["speedup_p50"], "size_ratio": c["size_ratio"], "params_ratio": c["params_ratio"],
        "teacher_size_bytes": t_torch["size_bytes"], "student_size_bytes": sel["size_bytes"],
        "teacher_params": t_torch["params"], "student_params": sel["params"],
        "latency_measured_on": sel.get("measured_on"), "host_cpu": rep["environment"].get("cpu"),
        "threads": rep["environment"].get("threads"),
        "kd_gain_points": c.get("kd_gain_points"),
        "build_wall_s": wall, "stage_seconds": {s["stage"]: s["seconds"] for s in runj["stages"]},
        # stages this build took from its folder instead of running (their seconds are the earlier run's)
        "reused_stages": [s["stage"] for s in runj["stages"] if s.get("reused")],
        "models": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "builds" / "bench-byo", help="the user's folder (recreated)")
    ap.add_argument("--train-per-class", type=int, default=800)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--teacher-batch", type=int, default=128)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--student-kwargs", default="{widths: [32, 64, 128]}",
                    help="zoo small_cnn kwargs (in_channels/num_classes come from the data)")
    ap.add_argument("--targets", nargs="+", default=["cpu", "mobile"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the builds")
    ap.add_argument("--quick", action="store_true", help="--quick builds (smoke run, writes byo-smoke.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-teacher", action="store_true", help="reuse photos/ and teacher.pt from an earlier run")
    ap.add_argument("--note", action="append", default=[], help="a note to keep in the JSON (e.g. what else ran on the host)")
    ap.add_argument("--collect", action="store_true",
                    help="build nothing: summarize the finished build-TARGET folders of an earlier run (wall time from run.json)")
    args = ap.parse_args()

    work = args.work.resolve()
    result: dict = {"sizes": {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                              "image": "28x28 grayscale PNG, read as RGB"}, "seed": args.seed}
    t_all = time.perf_counter()
    if args.collect:
        args.keep_teacher = True
    if not (args.keep_teacher and (work / "teacher.json").is_file()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        counts = write_photos(work / "photos", {"train": args.train_per_class, "test": args.test_per_class}, args.seed)
        result["photos_seconds"] = time.perf_counter() - t0
        result["sizes"] |= {"train_images": counts["train"], "test_images": counts["test"]}
        print(f"wrote {counts} PNGs in {result['photos_seconds']:.0f} s; training the user's teacher", flush=True)
        load_before = os.getloadavg()[0]
        teacher = train_teacher(work / "photos", work / "teacher.pt", args.teacher_epochs, args.teacher_batch,
                                args.teacher_lr, args.seed)
        teacher["host_load_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        (work / "teacher.json").write_text(json.dumps(teacher, indent=2))
    else:
        teacher = json.loads((work / "teacher.json").read_text())
        result["sizes"] |= {f"{split}_images": sum(1 for _ in (work / "photos" / split).rglob("*.png")) for split in ("train", "test")}
        result["teacher_reused"] = True  # photos/ and teacher.pt from an earlier run of this script
        if not args.collect:
            for b in work.glob("build-*"):
                shutil.rmtree(b)
            shutil.rmtree(work / "cache", ignore_errors=True)
    result["teacher_training"] = teacher

    if args.collect:
        result["init"] = {"seconds": None, "card": (work / "card.yaml").read_text()}
    else:
        init_s, r = run(work, "init", "--teacher", "torchvision:resnet18", "--teacher-kwargs", "{num_classes: 10}",
                        "--weights", "teacher.pt", "--data", "photos",
                        "--student-kwargs", args.student_kwargs, "--name", "photos-resnet18")
        (work / "card.yaml").write_text(r.stdout)
        result["init"] = {"seconds": init_s, "card": r.stdout}
    sets = [a for s in args.sets for a in ("--set", s)]
    builds = {}
    for target in args.targets if args.collect else ():
        out = work / f"build-{target}"
        runj = json.loads((out / "run.json").read_text())
        if runj["status"] != "ok":
            raise SystemExit(f"{out}: build status {runj['status']!r}")
        from datetime import datetime

        wall = (datetime.fromisoformat(runj["finished"]) - datetime.fromisoformat(runj["started"])).total_seconds()
        builds[target] = summarize(out, wall)
    for target in args.targets if not args.collect else ():
        out = work / f"build-{target}"
        print(f"edgekd build --target {target} ...", flush=True)
        load_before = os.getloadavg()[0]
        wall, _ = run(work, "build", "--target", target, "--recipe", "card.yaml", "--out", str(out), "--quiet",
                      *(["--quick"] if args.quick else []), *sets)
        builds[target] = summarize(out, wall)
        # other work on the host slows the build and adds noise to latencies: say how busy it was
        builds[target]["host_load_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        b = builds[target]
        print(f"  {target}: {wall / 60:.1f} min, teacher {b['teacher_accuracy']:.4f} -> {b['selected']} "
              f"{b['student_accuracy']:.4f} ({b['accuracy_retention']:.1%} retained), "
              f"{b['speedup_p50']:.1f}x faster than PyTorch", flush=True)
    result["builds"] = builds
    first = next(iter(builds.values()))
    result["threads"], result["host_cpu"] = first["threads"], first["host_cpu"]  # latency: 1 thread, batch 1, this host
    result["sets"] = args.sets
    result["quick"] = args.quick
    result["goals"] = {"accuracy_retention_min": 0.97, "speedup_vs_teacher_torch_min": 10.0, "build_minutes_max": 20.0}
    result["goals_met"] = {t: {"retention": b["accuracy_retention"] >= 0.97, "speedup": b["speedup_p50"] >= 10.0,
                               # a build that reused stages is not a whole build: its time is not judged
                               "build_time": None if b["reused_stages"] else b["build_wall_s"] <= 20 * 60}
                           for t, b in builds.items()}
    result["notes"] = args.note
    result["total_seconds"] = time.perf_counter() - t_all
    result["nice"] = os.nice(0)
    write("byo-smoke" if args.quick else "byo", result)


if __name__ == "__main__":
    main()
