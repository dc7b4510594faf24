"""Where does the language-model student's natural-text perplexity gap lie? Reads finished text-generation builds
and writes benchmarks/results/lm_ppl_gap.json:

    python benchmarks/bench_lm_ppl_gap.py builds/gt-curve-1000-0.5 builds/gt-curve-4000-0.5 ...

The report's natural-text perplexity ratio is exp(mean student NLL - mean teacher NLL) over the held-out snippets'
tokens (Rotten Tomatoes test-bucket movies, as the build's natural stage scored them). This splits that log-ratio
between the tokens the teacher ranks in its top-k (the only ones token-level KD on a top-k cache shows the student)
and the rest (the tail: the student learns them from hard labels, or not at all): each part is the tokens' share
times the mean NLL difference on them, and the parts add up to the log-ratio. A gap mostly in the tail says a larger
top_k or hard labels on the general text would close it; a gap mostly inside the top-k says the student has not
learned the teacher's ranking of likely tokens: more general text (or a larger student). Forward passes only, fp32
PyTorch, 1 thread: about a minute per build.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import RESULTS, ROOT, write


def gap(teacher, student, examples, k: int) -> dict:
    """The log-ratio's split between the teacher's top-k tokens and the rest, over `examples` (edgekd Example: loss on
    every position from `start`)."""
    import torch

    acc = {"top_k": [0, 0.0, 0.0], "tail": [0, 0.0, 0.0]}  # tokens, teacher NLL sum, student NLL sum
    mass = 0.0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.ids])
            lt = torch.log_softmax(teacher(ids).logits[0, e.start - 1:-1].float(), -1)
            ls = torch.log_softmax(student(ids).logits[0, e.start - 1:-1].float(), -1)
            y = ids[0, e.start:]
            top = lt.topk(k, -1)
            inside = (top.indices == y[:, None]).any(-1)
            mass += float(top.values.exp().sum())
            nt, ns = -lt.gather(1, y[:, None])[:, 0], -ls.gather(1, y[:, None])[:, 0]
            for name, m in (("top_k", inside), ("tail", ~inside)):
                acc[name][0] += int(m.sum())
                acc[name][1] += float(nt[m].sum())
                acc[name][2] += float(ns[m].sum())
    n = sum(v[0] for v in acc.values())
    parts = {name: {"tokens": c, "share": c / n, "teacher_nll": t / c if c else None,
                    "student_nll": s / c if c else None, "log_ratio_part": (s - t) / n}
             for name, (c, t, s) in acc.items()}
    log_ratio = sum(p["log_ratio_part"] for p in parts.values())
    return {"tokens": n, "k": k, "teacher_top_k_mass": mass / n, "parts": parts, "log_ratio": log_ratio,
            "perplexity_ratio": math.exp(log_ratio)}


def one(build: Path, k: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekd.llm.natural_text import natural_text

    teacher_dir = json.loads((build / "teacher" / "teacher.json").read_text())["folder"]
    cfg = json.loads((build / "natural" / "result.json").read_text())["config"]
    rep = json.loads((build / "report" / "report.json").read_text())
    run = json.loads((build / "run.json").read_text())
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(build / "distill" / "student").eval()
    examples = natural_text(tok, cfg["natural_text"], cfg["natural_text_max_length"])
    g = gap(teacher, student, examples, k)
    reported = (rep["training"].get("natural_text") or {}).get("perplexity_ratio")
    return {"build": str(build.resolve().relative_to(ROOT)) if build.resolve().is_relative_to(ROOT) else str(build),
            "overrides": run.get("overrides"), "general_text": rep["training"].get("general_text"),
            "reported_perplexity_ratio": reported, **g}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--k", type=int, default=16, help="the top-k split (the card's teacher_cache.top_k)")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--add", action="store_true", help="keep the results file's other builds (and notes)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    new = [one(b, args.k) for b in args.builds]
    old = json.loads((RESULTS / "lm_ppl_gap.json").read_text()) if args.add and (RESULTS / "lm_ppl_gap.json").is_file() \
        else {"builds": [], "notes": []}
    keep = [b for b in old["builds"] if b["build"] not in {n["build"] for n in new}]
    write("lm_ppl_gap", {"notes": [*old["notes"], *args.note], "threads": 1, "builds": keep + new})


if __name__ == "__main__":
    main()
