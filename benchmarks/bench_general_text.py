"""Does token-level KD on general text keep the LM student's language (issue #28 item 3)? Two builds of
smollm2-seqkd that differ only in `distill.general_text`, scored on the same held-out sets; writes
benchmarks/results/general_text.json.

    python benchmarks/bench_general_text.py                 # both builds (about 50 min at 1 thread), then the table
    python benchmarks/bench_general_text.py --collect       # build nothing: read builds/gt-base and builds/gt-text
    python benchmarks/bench_general_text.py --curve 1000:0.5 --curve 4000:0.5 --curve 4000:1.0 --curve 1000:0.5:0.5
        # the curve (general_text_curve.json): one build per general-text mix (snippets:weight[:hard]) on the card's
        # answers, what more general text (or a heavier weight) buys in natural-text perplexity, and costs in agreement
        # and time; --add keeps the file's points of other mixes. The mix for the card is chosen on the validation
        # snippets' ratio (natural_text_val: other test-bucket movies), the test snippets' ratio reported beside it

Both builds: the card with distill.epochs=--epochs (default 1: the full card's 4 epochs take ~40 min each here),
fp32 only (no quantization: this is about what the student learned), no control arm, one profile repeat. The teacher's
answers and top-k logits come from the edgekd cache when an earlier build made them. Read from each report:
natural-text perplexity and next-token accuracy of student and teacher (Rotten Tomatoes test-bucket movies; the
general text is train-bucket movies only), the held-out-template / in-template / natural-prompt agreement with 95%
bootstrap intervals, the validation agreement the epoch was chosen on, and the training time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import RESULTS, ROOT, edgekd, write

COMMON = ["--set", "quantize.candidates=[fp32]", "--set", "generate.control=false", "--set", "generate.profile_repeats=1",
          "--set", "evaluate.quantized_teacher=[]"]


def arms(args: argparse.Namespace) -> dict[str, list[str]]:
    gt = f"{{source: rotten-tomatoes, samples: {args.samples}, max_length: 64, weight: {args.weight}}}"
    return {"answers only": [], "answers + general text": ["--set", f"distill.general_text={gt}"]}


def curve_arms(specs: list[str]) -> dict[str, list[str]]:
    """'SAMPLES:WEIGHT[:HARD]' -> the build's overrides (HARD: distill.general_text.hard_label, the share of the
    weight on the text's own next tokens); '0' is answers only."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        parts = spec.split(":")
        n, w, hard = parts[0], (parts[1:2] or ["0.5"])[0], (parts[2:3] or ["0"])[0]
        if int(n) == 0:
            out["answers only"] = ["--set", "distill.general_text=null"]
            continue
        gt = f"source: rotten-tomatoes, samples: {int(n)}, max_length: 64, weight: {float(w)}"
        name = f"{int(n)}:{float(w):g}"
        if float(hard):
            gt += f", hard_label: {float(hard)}"
            name += f", hard {float(hard):g}"
        out[name] = ["--set", f"distill.general_text={{{gt}}}"]
    return out


def summary(build: Path) -> dict:
    rep = json.loads((build / "report" / "report.json").read_text())
    run = json.loads((build / "run.json").read_text())
    t = rep["training"]
    nt = t.get("natural_text") or {}
    return {"build": str(build.relative_to(ROOT)), "overrides": run.get("overrides"),
            "stage_seconds": {s["stage"]: s["seconds"] for s in run["stages"]},
            "train_seconds": t["student"]["train_seconds"], "best_epoch": t["student"]["best_epoch"],
            "val_agreement": t["student"]["val"]["agreement"],
            "natural_text": {k: nt.get(k) for k in ("source", "snippets", "student", "teacher", "perplexity_ratio")},
            # the validation snippets (other movies): a general-text mix is chosen on this ratio, not the one above
            "natural_text_val": {k: (nt.get("val") or {}).get(k) for k in ("source", "student", "teacher",
                                                                            "perplexity_ratio")},
            "held_out": t["held_out"]["student"], "general_text": t.get("general_text")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", action="store_true", help="read the two build folders of an earlier run")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--curve", action="append", default=[], metavar="SAMPLES:WEIGHT[:HARD]",
                    help="one build per general-text mix on the card's answers (0: answers only) -> general_text_curve.json")
    ap.add_argument("--add", action="store_true",
                    help="with --curve: keep general_text_curve.json's points of other mixes (their own run notes)")
    args = ap.parse_args()
    if args.curve:
        return curve(args)
    folders = {"answers only": ROOT / "builds" / "gt-base", "answers + general text": ROOT / "builds" / "gt-text"}
    t0 = time.perf_counter()
    if not args.collect:
        for name, extra in arms(args).items():
            cmd = ["build", "--recipe", "smollm2-seqkd", "--target", "cpu", "--quiet", "--out", str(folders[name]),
                   "--set", f"distill.epochs={args.epochs}", *COMMON, *extra]
            edgekd(*cmd, env={"OMP_NUM_THREADS": str(args.threads)})
    res = {name: summary(f) for name, f in folders.items()}
    base, gt = res["answers only"], res["answers + general text"]
    delta = {k: 100 * (gt["held_out"][k]["agreement"] - base["held_out"][k]["agreement"]) for k in base["held_out"]}
    write("general_text", {
        "recipe": "smollm2-seqkd", "epochs": args.epochs, "threads": args.threads, "notes": args.note,
        "arms": res, "perplexity_ratio": {k: r["natural_text"]["perplexity_ratio"] for k, r in res.items()},
        "agreement_delta_points": delta, "train_time_ratio": gt["train_seconds"] / base["train_seconds"],
        "goal": {"natural_text_perplexity_ratio": 3.0}, "seconds": round(time.perf_counter() - t0, 1),
        "load_1min": os.getloadavg()[0]})


def curve(args: argparse.Namespace) -> None:
    """One build per general-text mix, everything else the card's (its answers per prompt, its losses) at --epochs."""
    points = []
    for name, extra in curve_arms(args.curve).items():
        folder = ROOT / "builds" / f"gt-curve-{name.replace(':', '-').replace(', hard ', '-h')}"
        if not args.collect:
            cmd = ["build", "--recipe", "smollm2-seqkd", "--target", "cpu", "--quiet", "--out", str(folder),
                   "--set", f"distill.epochs={args.epochs}", *COMMON, *extra]
            t1 = time.perf_counter()
            edgekd(*cmd, env={"OMP_NUM_THREADS": str(args.threads)})
            print(f"{name}: {time.perf_counter() - t1:.0f} s", flush=True)
        s = summary(folder)
        gt = s["general_text"] or {}
        points.append({"mix": name, "samples": gt.get("samples", 0), "weight": gt.get("weight", 0.0),
                       "hard_label": gt.get("hard_label", 0.0),
                       "general_tokens": gt.get("tokens", 0), **s})
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from edgekd.llm.natural_text import rotten_tomatoes

    notes = list(args.note)
    if args.add:  # points of mixes not rebuilt now stay, with the notes of the run that made them
        before = json.loads((RESULTS / "general_text_curve.json").read_text())
        kept = [p for p in before["points"] if p["mix"] not in {q["mix"] for q in points}]
        if kept:
            notes = [*before.get("notes", []), *notes]
        points = sorted(kept + points, key=lambda q: (q["samples"], q["weight"], q["hard_label"]))
    write("general_text_curve", {
        "recipe": "smollm2-seqkd", "epochs": args.epochs,
        "corpus_train_snippets": len(rotten_tomatoes("train")[0]), "threads": args.threads, "notes": notes,
        "settings": "the card's answers (train_samples), losses and seed; fp32 only, no control, no quantized "
                    "teacher, one profile repeat; each mix's general text drawn with the same seed",
        "points": points, "goal": {"natural_text_perplexity_ratio": 3.0},
        # the builds' own stage times (so --collect of the same folders writes the same file)
        "build_seconds": round(sum(sum(p["stage_seconds"].values()) for p in points), 1),
        "load_1min": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
