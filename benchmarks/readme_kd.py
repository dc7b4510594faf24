"""The README's "What distillation buys" table, generated from benchmarks/results/*.json (never typed).

One row per measured KD-vs-control comparison, negative results included: the build's own control arm
(distill.json `control`, written by `bench_distill.py --parts control`), the engine's ablation and
low-label runs (distill.json), the one-seed spine run (spine.json), the text-generation control
(llm.json) and recipes that have no control measurement yet (said so, not left out).

    python benchmarks/readme_kd.py           # rewrite the block between the markers in README.md
    python benchmarks/readme_kd.py --check   # exit 1 if README.md does not match the results files
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- kd-table:begin (benchmarks/readme_kd.py) -->", "<!-- kd-table:end -->"
HEADER = ["recipe", "setting", "metric (test split)", "seeds", "KD student", "labels-only control", "KD − control",
          "source"]
VARIANT_TEXT = {"recipe": "as shipped",
                "consistent": "consistent teaching: augmented inputs, teacher logits of the same views"}


def _load(results: Path, name: str) -> dict | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "—"


def _pts(x: Any) -> str:
    return f"{x:+.2f} pt" if isinstance(x, (int, float)) else "—"


def _gain(values: list[float]) -> str:
    """Mean gain, and the per-seed range when there are several seeds (a mean hides a losing seed)."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return _pts(mean)
    return f"{_pts(mean)} ({min(values):+.2f} … {max(values):+.2f})"


def rows(results: Path = RESULTS) -> list[list[str]]:
    out: list[list[str]] = []
    distill = _load(results, "distill") or {}
    for key, entry in sorted((distill.get("control") or {}).items()):
        recipe = entry.get("recipe", key)
        for name, v in entry.get("variants", {}).items():
            runs = [r for r in v.get("runs", []) if "error" not in r]
            gains = [r["kd_gain_points"] for r in runs]
            setting = VARIANT_TEXT.get(name, name)
            if "views=" in " ".join(v.get("overrides", [])):
                k = next(o.split("=", 1)[1] for o in v["overrides"] if "views=" in o)
                setting += f" ({k} cached views)"
            if entry.get("train_size"):
                setting += f", {entry['train_size']:,} training images"
            if entry.get("epochs"):
                setting += f", {entry['epochs']} epochs"
            for extra in entry.get("extra_sets") or []:
                setting += f", {extra}"
            if entry.get("quick"):
                setting += ", --quick"
            out.append([recipe, setting, "accuracy, fp32 ONNX in onnxruntime", str(len(runs)),
                        _pct(v["kd_accuracy"]["mean"]), _pct(v["control_accuracy"]["mean"]), _gain(gains),
                        f"distill.json control ({v.get('created', distill.get('created', ''))[:10]})"])
    ab = distill.get("ablation")
    if ab and "labels_only" in ab.get("rows", {}) and "kd_soft_label" in ab["rows"]:
        lo, kd = ab["rows"]["labels_only"]["test_accuracy"], ab["rows"]["kd_soft_label"]["test_accuracy"]
        gains = [100 * (a - b) for a, b in zip(kd["values"], lo["values"])]  # paired by distill.seed
        size = f"{ab['train_size']:,} training images" if ab.get("train_size") else "full data"
        out.append([ab["recipe"], f"engine ablation: {size}, {ab['epochs']} epochs", "accuracy, fp32 PyTorch",
                    str(kd["n"]), _pct(kd["mean"]), _pct(lo["mean"]), _gain(gains),
                    f"distill.json ablation ({ab.get('created', distill.get('created', ''))[:10]})"])
    low = distill.get("lowdata")
    if low and low.get("kd") and low.get("labels_only"):
        kd_e, lo_e = low["kd"]["test_error"], low["labels_only"]["test_error"]
        gains = [100 * (b - a) for a, b in zip(kd_e["values"], lo_e["values"])]  # error down = accuracy up
        out.append([low["recipe"], f"{int(100 * low['label_fraction'])}% of the labels", "accuracy, fp32 PyTorch",
                    str(kd_e["n"]), _pct(1 - kd_e["mean"]), _pct(1 - lo_e["mean"]), _gain(gains),
                    f"distill.json lowdata ({low.get('created', distill.get('created', ''))[:10]})"])
    spine = _load(results, "spine")
    if spine and spine.get("kd_vs_labels_only"):
        s = spine["kd_vs_labels_only"]
        out.append(["fashion-cnn", "earlier recipe (spine benchmark)", "accuracy, fp32 ONNX in onnxruntime", "1",
                    _pct(s["kd_student_fp32_accuracy"]), _pct(s["labels_only_student_fp32_accuracy"]),
                    _pts(s["gain_points"]), f"spine.json ({spine.get('created', '')[:10]})"])
    text = _load(results, "text")
    if text is not None:
        acc = (text.get("student") or {}).get("test_accuracy")
        out.append([text.get("recipe", "minilm-sentiment"), "as shipped", "accuracy, fp32 PyTorch", "1",
                    _pct(acc), "not measured", "—", f"text.json ({text.get('created', '')[:10]}): no control run yet"])
    llm = _load(results, "llm")
    if llm and llm.get("seqkd_vs_control"):
        c = llm["seqkd_vs_control"]
        out.append([llm.get("recipe", "smollm2-seqkd"), "control: same student on the prompts' raw text",
                    "next-token agreement with the teacher's answers, PyTorch", "1",
                    _pct(c["student_test"]["agreement"]), _pct(c["control_test"]["agreement"]),
                    _pts(c["agreement_gain_points"]), f"llm.json ({llm.get('created', '')[:10]})"])
    return out


def table(results: Path = RESULTS) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows(results)]
    return "\n".join(lines)


def render(readme: str, results: Path = RESULTS) -> str:
    """`readme` with the block between the markers replaced by the table of `results`."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise SystemExit(f"README must hold the markers once each, in order:\n{BEGIN}\n{END}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(results)}\n{END}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results files")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    old = args.readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.readme}: the 'What distillation buys' table is stale; run python benchmarks/readme_kd.py",
                  file=sys.stderr)
            raise SystemExit(1)
        return
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
