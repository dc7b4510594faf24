"""Distillation engine benchmarks (issue: distill). Writes benchmarks/results/NAME.json (default distill.json).

1. ablation  on --recipe (default fashion-cnn): same student, epochs and data, N seeds (distill.seed = 0..N-1);
             mean ± std test accuracy of the fp32 student (PyTorch, distill/result.json) for: labels only; soft-label
             KD (the recipe's losses); KD + feature (layer3 -> layer3, conv1x1 projector, weight 0.5); KD + relation
             (rkd_distance on pool, weight 1.0); KD + dynamic weighting (teacher_confidence); born-again (generation 2).
             Each "+" is added to KD alone (--mode independent, default) or on top of the previous row (--mode cumulative).
2. lowdata   digits-mlp with data.label_fraction=0.1, 5 distill seeds (data fixed): labels-only vs KD test error.
3. cache     per-epoch seconds with the teacher-logit cache vs the online teacher on --recipe (augment off, 2 epochs).
4. control   the build's own control arm (distill.control=true) on each of --control-recipes, --seeds seeds, for each
             of --variants: `recipe` (the card as shipped) and `consistent` (consistent teaching from the cache:
             distill.augment=true, distill.teacher_cache.views=--views; the control trains on the same views).
             Reads report.json: KD student/fp32 vs labels-only control, both fp32 ONNX in onnxruntime on the test
             split; gain per seed, mean, every-seed-positive, retention and params ratio, and the issue's goal
             (mean gain >= 0.5 points, every seed positive, student <= 1/30 of the teacher's params, retention >= 97%).

Every run is a real `edgekd build` (quantize.candidates=[fp32], tiny profiling: this is about accuracy) into
builds/bench-distill/..., removed after its numbers are read. The teacher is trained once and then taken from the
edgekd cache (EDGEKD_CACHE, default ~/.cache/edgekd); note that data.train_size is part of the teacher's key.

    python benchmarks/bench_distill.py [--recipe fashion-cnn] [--seeds 3] [--train-size N] [--epochs E] [--parts ...]
    python benchmarks/bench_distill.py --smoke     # digits-mlp --quick, 1 seed (lowdata: 2 seeds), 3 epochs
    python benchmarks/bench_distill.py --parts control --control-recipes fashion-cnn --variants recipe consistent --merge
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from typing import Any

from _common import RESULTS, ROOT, edgekd, write

TINY_PROFILE = ["target.profile.min_runs=10", "target.profile.min_seconds=0", "target.profile.repeats=1",
                "target.profile.max_seconds=1", "target.profile.warmup_runs=1", "target.profile.warmup_seconds=0",
                "target.profile.batch_sweep=[1]"]
WORK = ROOT / "builds" / "bench-distill"


def flow(obj: Any) -> str:
    """An override value in YAML flow style (JSON is valid YAML)."""
    return json.dumps(obj)


def module_paths(recipe) -> dict[str, dict]:
    """Feature/relation loss specs that fit the recipe's zoo models (module paths differ per family)."""
    s_arch, t_arch = recipe.student.arch, recipe.teacher.arch
    # mlp_ensemble has no top-level layers: address its first member
    t_pre = "members.0." if t_arch == "mlp_ensemble" else ""
    if s_arch == "small_cnn":
        s_feat = f"layer{len(recipe.student.kwargs.get('widths', [16, 32, 48]))}"
        proj = "conv1x1"
    else:  # mlp: the last hidden layer
        s_feat = f"layer{len(recipe.student.kwargs.get('hidden', [64]))}"
        proj = "linear"
    if t_arch == "resnet_cnn":
        t_feat = f"layer{len(recipe.teacher.kwargs.get('widths', [64, 128, 256]))}"
    else:
        t_feat = f"{t_pre}layer{len(recipe.teacher.kwargs.get('hidden', [64]))}"
    return {"feature": {"kind": "feature", "weight": 0.5, "student": s_feat, "teacher": t_feat, "projector": proj},
            "relation": {"kind": "relation", "weight": 1.0, "mode": "rkd_distance", "student": "pool",
                         "teacher": f"{t_pre}pool"}}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = 0

    def build(self, tag: str, recipe: str, sets: list[str]) -> dict:
        """One edgekd build; returns distill metrics (+ wall time, distill stage seconds) or an error entry."""
        self.n += 1
        out = WORK / tag
        if not self.args.reuse:
            shutil.rmtree(out, ignore_errors=True)
        # --reuse: build into the existing folder, so finished stages are reused and an interrupted
        # distill stage resumes from its per-epoch checkpoint (same settings => same cache keys)
        cmd = ["build", "--target", "cpu", "--recipe", recipe, "--quiet", "--out", str(out),
               "--set", "quantize.candidates=[fp32]"]
        if self.args.quick:
            cmd.append("--quick")
        for s in TINY_PROFILE + sets + list(self.args.set or []):
            cmd += ["--set", s]
        dt, r = edgekd(*cmd, env={"OMP_NUM_THREADS": str(self.args.threads)}, check=False)
        try:
            if r.returncode != 0:
                lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
                print(f"  {tag}: FAILED ({r.returncode}) {lines[-1] if lines else ''}")
                return {"error": f"exit {r.returncode}: {' | '.join(lines[-3:])[:600]}", "wall_s": round(dt, 1)}
            m = json.loads((out / "distill" / "result.json").read_text())["metrics"]
            rp = out / "report" / "report.json"
            m["report"] = report_summary(json.loads(rp.read_text())) if rp.is_file() else None
            stages = {s["stage"]: s["seconds"] for s in json.loads((out / "run.json").read_text())["stages"]}
            m["wall_s"] = round(dt, 1)
            m["distill_stage_s"] = stages.get("distill")
            m["teacher_cached"] = json.loads((out / "teacher" / "result.json").read_text())["metrics"].get("cached")
            print(f"  {tag}: test_acc={m['test_accuracy']:.4f} ({dt:.0f} s)")
            return m
        finally:
            if not self.args.keep:
                shutil.rmtree(out, ignore_errors=True)


def report_summary(rep: dict) -> dict:
    """What the control part reads from a report: the KD student/fp32 and control figures and the ratios."""
    fp32 = next((m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32"), {})
    ctrl = (rep.get("training") or {}).get("control") or {}
    c = rep.get("comparison") or {}
    return {"kd_accuracy": fp32.get("accuracy"), "control_accuracy": ctrl.get("accuracy"),
            "kd_gain_points": c.get("kd_gain_points"), "measured_with": ctrl.get("measured_with"),
            "teacher_accuracy": (rep["models"][0] or {}).get("accuracy"),
            "retention_fp32": (fp32.get("accuracy") / rep["models"][0]["accuracy"]
                               if fp32.get("accuracy") and rep["models"][0].get("accuracy") else None),
            "params_ratio": c.get("params_ratio"), "student_params": fp32.get("params"),
            "control_train_seconds": ctrl.get("train_seconds"), "control_epochs": ctrl.get("epochs")}


GOAL = {"mean_gain_points": 0.5, "every_seed_positive": True, "max_params_fraction": 1 / 30, "min_retention": 0.97}


def summarize_variant(sets: list[str], runs: list[dict]) -> dict:
    """A variant's entry from its per-seed runs: gain statistics and the issue's goal checks."""
    ok = sorted((x for x in runs if "error" not in x), key=lambda x: x["seed"])
    kd, ctl, gains = ([x[k] for x in ok] for k in ("kd_accuracy", "control_accuracy", "kd_gain_points"))
    g = stats(gains)
    retention = min((x["retention_fp32"] for x in ok if x["retention_fp32"]), default=None)
    ratio = min((x["params_ratio"] for x in ok if x["params_ratio"]), default=None)
    goal = {"mean_gain": g["mean"] is not None and g["mean"] >= GOAL["mean_gain_points"],
            "every_seed_positive": bool(gains) and all(x > 0 for x in gains),
            "params": ratio is not None and 1 / ratio <= GOAL["max_params_fraction"],
            "retention": retention is not None and retention >= GOAL["min_retention"]}
    return {"overrides": sets, "seeds": [x["seed"] for x in ok], "kd_accuracy": stats(kd), "control_accuracy": stats(ctl),
            "gain_points": g, "every_seed_positive": goal["every_seed_positive"],
            "min_retention_fp32": retention, "params_ratio": ratio,
            "goal": GOAL, "goal_checks": goal, "meets_goal": bool(gains) and all(goal.values()),
            "measured_with": next((x["measured_with"] for x in ok), None),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": sorted(runs, key=lambda x: x["seed"])}


def merge_variant(old: dict, new: dict) -> dict:
    """Seeds run by another process (--seed-start) join the same variant when its overrides match and
    no seed repeats; otherwise the newer entry replaces the older."""
    seeds_old = {x["seed"] for x in old.get("runs", [])}
    seeds_new = {x["seed"] for x in new.get("runs", [])}
    if old.get("overrides") != new.get("overrides") or seeds_old & seeds_new:
        return new
    return summarize_variant(new["overrides"], old["runs"] + new["runs"])


def control(run: Runner, args: argparse.Namespace) -> dict:
    """KD vs the build's own labels-only control, per recipe and variant, --seeds seeds from --seed-start."""
    variants = {"recipe": [],
                "consistent": ["distill.augment=true", f"distill.teacher_cache.views={args.views}",
                               "distill.teacher_cache.enabled=true"]}
    out: dict[str, Any] = {}
    extra = stable_tag(args.set)
    for recipe in args.control_recipes:
        per: dict[str, Any] = {}
        for name in args.variants:
            sets = ["distill.control=true"] + variants[name]
            sets += [f"distill.epochs={args.epochs}"] if args.epochs else []
            sets += [f"data.train_size={args.train_size}"] if args.train_size else []
            runs = []
            for seed in range(args.seed_start, args.seed_start + args.seeds):
                m = run.build(f"control-{recipe}-{name}{extra}-s{seed}", recipe, sets + [f"distill.seed={seed}"])
                r = m.get("report") if "error" not in m else None
                if r is None or r.get("kd_gain_points") is None:
                    runs.append({"seed": seed, "error": m.get("error", "no control in the report")})
                    continue
                runs.append({"seed": seed, **r, "kd_train_seconds": round(m["train_seconds"], 2),
                             "distill_stage_s": m.get("distill_stage_s"), "wall_s": m.get("wall_s")})
            per[name] = summarize_variant(sets, runs)
        # a subset is another experiment (and another teacher): it gets its own entry
        key = recipe if not args.train_size else f"{recipe}:train_size={args.train_size}"
        key += "".join(f":{x}" for x in args.set or [])
        out[key] = {"recipe": recipe, "quick": args.quick, "epochs": args.epochs,
                    "train_size": args.train_size, "extra_sets": list(args.set or []),
                    "student": student_spec(recipe, args.set, args.quick), "variants": per}
    return out


def student_spec(recipe: str, sets: list[str] | None, quick: bool) -> dict:
    """The student an entry was measured with (arch and kwargs after the overrides): the card may change later,
    and README's table names the student when it is not the card's."""
    from edgekd.cards import load_recipe
    from edgekd.config import parse_sets

    card = load_recipe(recipe, parse_sets(sets), quick=quick)
    return {"arch": card.student.arch, "kwargs": dict(card.student.kwargs)}


def stable_tag(sets: list[str] | None) -> str:
    """A short suffix naming --set overrides in build folder names (two runs with other sets never share one)."""
    if not sets:
        return ""
    import hashlib

    return "-" + hashlib.sha256("\n".join(sets).encode()).hexdigest()[:8]


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}


def ablation(run: Runner, args: argparse.Namespace) -> dict:
    from edgekd.cards import load_recipe

    recipe = load_recipe(args.recipe, {}, quick=args.quick)
    kd_losses = [lc.model_dump() for lc in recipe.distill.losses]
    spec = module_paths(recipe)
    feature = json.loads(args.feature) if args.feature else spec["feature"]
    relation = json.loads(args.relation) if args.relation else spec["relation"]
    base = [f"distill.epochs={args.epochs}"] if args.epochs else []
    base += [f"data.train_size={args.train_size}"] if args.train_size else []
    weighting = "distill.weighting={kind: teacher_confidence}"
    rows: list[tuple[str, list[str]]] = [
        ("labels_only", [f"distill.losses={flow([{'kind': 'hard_label', 'weight': 1.0}])}"]),
        ("kd_soft_label", []),
    ]
    # feature/relation losses need the teacher's activations, so those rows run the teacher online (a recipe that
    # asks for the logit cache together with them is refused by design).
    online = "distill.teacher_cache.enabled=false"
    if args.mode == "independent":
        rows += [("kd+feature", [f"distill.losses={flow(kd_losses + [feature])}", online]),
                 ("kd+relation", [f"distill.losses={flow(kd_losses + [relation])}", online]),
                 ("kd+weighting", [weighting]),
                 ("kd+born_again_g2", ["distill.born_again_generations=1"])]
    else:
        rows += [("kd+feature", [f"distill.losses={flow(kd_losses + [feature])}", online]),
                 ("kd+feature+relation", [f"distill.losses={flow(kd_losses + [feature, relation])}", online]),
                 ("kd+feature+relation+weighting", [f"distill.losses={flow(kd_losses + [feature, relation])}", weighting,
                                                    online]),
                 ("kd+feature+relation+weighting+born_again_g2",
                  [f"distill.losses={flow(kd_losses + [feature, relation])}", weighting, "distill.born_again_generations=1",
                   online])]
    table: dict[str, dict] = {}
    for name, sets in rows:
        accs, runs = [], []
        for seed in range(args.seeds):
            m = run.build(f"ablation-{name}-s{seed}".replace("+", "_"), args.recipe, base + sets + [f"distill.seed={seed}"])
            if "error" in m:
                runs.append({"seed": seed, "error": m["error"]})
                continue
            gens = m.get("generations") or []
            # born-again row: report generation 2 itself (the build keeps the better of g1/g2 by val accuracy)
            acc = gens[1]["test_accuracy"] if name.endswith("born_again_g2") and len(gens) > 1 else m["test_accuracy"]
            accs.append(acc)
            runs.append({"seed": seed, "test_accuracy": acc, "val_accuracy": m["val_accuracy"],
                         "selected_generation": m.get("generation"),
                         "generations_test_accuracy": [g["test_accuracy"] for g in gens],
                         "train_seconds": round(m["train_seconds"], 2), "best_epoch": m.get("best_epoch")})
        table[name] = {"test_accuracy": stats(accs), "overrides": sets, "runs": runs}
    ref = table["kd_soft_label"]["test_accuracy"]["mean"]
    lo = table["labels_only"]["test_accuracy"]["mean"]
    for name, row in table.items():
        m = row["test_accuracy"]["mean"]
        row["points_vs_kd"] = round(100 * (m - ref), 3) if m is not None and ref is not None else None
        row["points_vs_labels_only"] = round(100 * (m - lo), 3) if m is not None and lo is not None else None
    return {"recipe": args.recipe, "quick": args.quick, "seeds": args.seeds, "mode": args.mode,
            "epochs": args.epochs or recipe.distill.epochs, "train_size": args.train_size or recipe.data.train_size,
            "feature_loss": feature, "relation_loss": relation, "kd_losses": kd_losses, "rows": table}


def lowdata(run: Runner, args: argparse.Namespace) -> dict:
    seeds = args.lowdata_seeds
    sets = ["data.label_fraction=0.1"] + ([f"distill.epochs={args.lowdata_epochs}"] if args.lowdata_epochs else [])
    out: dict[str, Any] = {"recipe": "digits-mlp", "label_fraction": 0.1, "seeds": seeds, "quick": args.quick,
                           "varied": "distill.seed (data.seed fixed: same labelled subset)"}
    for name, extra in (("labels_only", [f"distill.losses={flow([{'kind': 'hard_label', 'weight': 1.0}])}"]),
                        ("kd", [])):
        errs, runs = [], []
        for seed in range(seeds):
            m = run.build(f"lowdata-{name}-s{seed}", "digits-mlp", sets + extra + [f"distill.seed={seed}"])
            if "error" in m:
                runs.append({"seed": seed, "error": m["error"]})
                continue
            errs.append(1.0 - m["test_accuracy"])
            runs.append({"seed": seed, "test_error": 1.0 - m["test_accuracy"], "val_accuracy": m["val_accuracy"]})
        out[name] = {"test_error": stats(errs), "runs": runs}
    a, b = out["labels_only"]["test_error"]["mean"], out["kd"]["test_error"]["mean"]
    out["error_reduction_points"] = round(100 * (a - b), 3) if a is not None and b is not None else None
    out["relative_error_reduction"] = (a - b) / a if a and b is not None else None
    return out


def cache_speed(run: Runner, args: argparse.Namespace) -> dict:
    base = ["distill.augment=false", "distill.epochs=2"]
    base += [f"data.train_size={args.train_size}"] if args.train_size else []
    per: dict[str, list[float]] = {"online": [], "cached": []}
    runs = []
    for rep in range(args.cache_repeats):
        # alternate which goes first so a drift of the machine does not favour one side
        order = [("online", "false"), ("cached", "true")]
        for name, flag in (order if rep % 2 == 0 else order[::-1]):
            m = run.build(f"cache-{name}-r{rep}", args.recipe, base + [f"distill.teacher_cache.enabled={flag}"])
            if "error" in m:
                runs.append({"variant": name, "repeat": rep, "error": m["error"]})
                continue
            secs = [h["seconds"] for h in m["history"]]
            per[name] += secs
            runs.append({"variant": name, "repeat": rep, "epoch_seconds": secs, "train_seconds": m["train_seconds"],
                         "distill_stage_s": m["distill_stage_s"]})
    mo = statistics.fmean(per["online"]) if per["online"] else None
    mc = statistics.fmean(per["cached"]) if per["cached"] else None
    ratio = mo / mc if mo and mc else None
    return {"recipe": args.recipe, "quick": args.quick, "epochs": 2, "augment": False, "repeats": args.cache_repeats,
            "train_size": args.train_size, "threads": args.threads,
            "mean_epoch_seconds_online": mo, "mean_epoch_seconds_cached": mc, "speedup": ratio, "goal": 3.0,
            "meets_goal": (ratio is not None and ratio >= 3.0),
            "note": "distill_stage_s of the first cached run includes writing the logit cache (one teacher pass); "
                    "later runs reuse it from EDGEKD_CACHE",
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=None, help="recipe of parts 1 and 3 (default fashion-cnn; digits-mlp with --smoke)")
    ap.add_argument("--parts", nargs="+", choices=["ablation", "lowdata", "cache", "control"],
                    default=["ablation", "lowdata", "cache"])
    ap.add_argument("--control-recipes", nargs="+", default=None, help="part 4 recipes (default fashion-cnn digits-mlp)")
    ap.add_argument("--variants", nargs="+", choices=["recipe", "consistent"], default=["recipe"],
                    help="part 4: the card as shipped, and/or consistent teaching from --views cached augmented views")
    ap.add_argument("--views", type=int, default=8, help="part 4 `consistent`: augmented views cached (teacher passes)")
    ap.add_argument("--seeds", type=int, default=None, help="ablation seeds (default 3; 1 with --smoke)")
    ap.add_argument("--seed-start", type=int, default=0,
                    help="part 4: first distill.seed (run seeds 1-2 in another process; --merge joins them)")
    ap.add_argument("--mode", choices=["independent", "cumulative"], default="independent")
    ap.add_argument("--train-size", type=int, default=None, help="data.train_size for parts 1, 3 and 4 (retrains the teacher once)")
    ap.add_argument("--epochs", type=int, default=None, help="distill.epochs for part 1")
    ap.add_argument("--lowdata-seeds", type=int, default=None, help="part 2 seeds (default 5; 2 with --smoke)")
    ap.add_argument("--lowdata-epochs", type=int, default=None, help="distill.epochs for part 2 (default: recipe's)")
    ap.add_argument("--cache-repeats", type=int, default=None, help="part 3 repeats of the pair (default 2; 1 with --smoke)")
    ap.add_argument("--feature", help="feature loss spec as JSON (default: fits the recipe's zoo models)")
    ap.add_argument("--relation", help="relation loss spec as JSON (default: rkd_distance on pool)")
    ap.add_argument("--quick", action="store_true", help="build with --quick (the recipe's quick block)")
    ap.add_argument("--set", action="append", help="extra --set for every build")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the builds")
    ap.add_argument("--smoke", action="store_true", help="digits-mlp --quick, 1 seed, 3 epochs: proves the script runs")
    ap.add_argument("--keep", action="store_true", help="keep the build folders under builds/bench-distill")
    ap.add_argument("--reuse", action="store_true", help="resume/reuse build folders left by an interrupted run")
    ap.add_argument("--out-name", default=None, help="results file name (default distill, distill-smoke)")
    ap.add_argument("--merge", action="store_true", help="keep the parts not rerun from the existing results file")
    args = ap.parse_args()
    if args.smoke:
        args.quick = True
        args.recipe = args.recipe or "digits-mlp"
        args.epochs = args.epochs or 3
        args.lowdata_epochs = args.lowdata_epochs or 3
    args.recipe = args.recipe or "fashion-cnn"
    args.seeds = args.seeds or (1 if args.smoke else 3)
    args.lowdata_seeds = args.lowdata_seeds or (2 if args.smoke else 5)
    args.cache_repeats = args.cache_repeats or (1 if args.smoke else 2)

    run = Runner(args)
    out: dict[str, Any] = {"smoke": args.smoke, "threads": args.threads, "extra_sets": args.set or []}
    if "ablation" in args.parts:
        print("ablation:")
        out["ablation"] = ablation(run, args)
    if "lowdata" in args.parts:
        print("lowdata (digits-mlp, label_fraction=0.1):")
        out["lowdata"] = lowdata(run, args)
    if "cache" in args.parts:
        print("teacher cache vs online teacher:")
        out["teacher_cache"] = cache_speed(run, args)
    if "control" in args.parts:
        args.control_recipes = args.control_recipes or (["digits-mlp"] if args.smoke else ["fashion-cnn", "digits-mlp"])
        print("KD vs the build's labels-only control:")
        out["control"] = control(run, args)
    out["builds"] = run.n
    if not args.keep:  # each build folder is removed after it is read; another run may still be using WORK
        try:
            WORK.rmdir()
        except OSError:
            pass
    name = args.out_name or ("distill-smoke" if args.smoke else "distill")
    prev = RESULTS / f"{name}.json"
    if args.merge and prev.is_file():
        old = json.loads(prev.read_text())
        for part in ("ablation", "lowdata", "teacher_cache"):
            if part not in out and part in old:
                # a kept part says when it was measured (the file's `created` is this run's)
                out[part] = {"created": old.get("created"), **old[part]}
        # control: recipes and variants not rerun are kept (each entry says when it was measured)
        for recipe, entry in (old.get("control") or {}).items():
            cur = out.setdefault("control", {}).setdefault(recipe, entry)
            if cur is not entry:
                for variant, v in entry.get("variants", {}).items():  # not `name`: that is the file name
                    mine = cur["variants"].get(variant)
                    cur["variants"][variant] = v if mine is None else merge_variant(v, mine)
        out["builds"] = {"this_run": run.n, "merged_from": old.get("created")}
    write(name, out)


if __name__ == "__main__":
    main()
