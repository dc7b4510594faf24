"""Would a trimmed output vocabulary make the language-model student fast enough? The student's output head (one row
per token of the teacher's 49k vocabulary) is about half of its multiply-accumulates per decoded token; a head over
only the K tokens most frequent in what the student trains on would shrink it K/vocab-fold, but the student could then
never emit the other tokens. This reads a finished card build and writes benchmarks/results/lm_vocab.json:

    python benchmarks/bench_lm_vocab.py --build builds/bench-llm

Per K: the share of the teacher's answer tokens that the K kept tokens cover (training answers + prompts + the
general-text snippets decide which K; coverage is read on validation, on held-out templates and on the natural
prompts, whose answers are the teacher's greedy tokens, the very tokens agreement is scored on: a token outside
the K is a certain miss, so 1 - coverage is the agreement a trimmed head gives up at most... and at least, where the
student would have agreed), and the per-token compute of the student with that head against the teacher's (a model of
the compute from decode_compute in the build's report, not a timing). Nothing is trained or timed: seconds.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from _common import ROOT, write

KS = (2048, 4096, 8192, 16384, 32768)


def _examples(tok, path: Path, max_length: int, end_id: int, split: str | None = None):
    from edgekd.llm.sequences import build_examples

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return build_examples(tok, rows, max_length, end_id)


def _student_rows(model, examples, pad: int):
    """The trained student's logits at every answer position of `examples` [rows, vocab] (teacher forcing)."""
    import torch

    from edgekd.llm.sequences import answer_logits

    with torch.no_grad():
        return torch.cat([answer_logits(model, examples[i:i + 16], pad).float() for i in range(0, len(examples), 16)])


def _agreement(rows, tokens: list[int], keep: set[int]) -> float:
    """Next-token agreement with the teacher's tokens of a head over `keep` only: the argmax over the kept rows of the
    trained student's logits (the head trimmed after training, nothing retrained)."""
    import torch

    mask = torch.full((rows.shape[1],), float("-inf"))
    mask[sorted(keep)] = 0.0
    return float(((rows + mask).argmax(dim=1) == torch.tensor(tokens)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, required=True, help="a finished smollm2-seqkd build folder")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import yaml
    from transformers import AutoTokenizer

    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.vocab import training_vocab

    b = args.build.resolve()
    recipe = yaml.safe_load((b / "recipe.yaml").read_text())
    d = json.loads((b / "distill" / "result.json").read_text())["metrics"]
    rep = json.loads((b / "report" / "report.json").read_text())
    tok = AutoTokenizer.from_pretrained(b / "distill" / "student")
    L, end = int(recipe["data"]["max_length"]), int(d["end_id"])
    ans = b / "generate" / "answers.jsonl"
    seqs = [e.ids for e in _examples(tok, ans, L, end, "train")]  # prompts and answers: what the student reads
    gt = recipe["distill"].get("general_text")
    if gt:  # the same draw as the build's distill stage
        from edgekd.llm.natural_text import general_text

        seqs += [e.ids for e in general_text(tok, gt["source"], gt["samples"], gt["max_length"], recipe["distill"]["seed"])[0]]
    always = [end, *d.get("stop_ids", [])]
    seen = set(training_vocab(seqs, always))  # what the -vocab candidates keep (edgekd's own rule)
    ranked = [t for t, _ in collections.Counter(t for s in seqs for t in s).most_common()]
    sets = {"validation": _examples(tok, ans, L, end, "val"), "held-out templates": _examples(tok, ans, L, end, "test")}
    if (b / "natural" / "answers.jsonl").is_file():
        sets["natural prompts"] = _examples(tok, b / "natural" / "answers.jsonl", L, end)
    answer_tokens = {k: [t for e in v for t in e.ids[e.start:]] for k, v in sets.items()}
    model, _ = load_causal_lm(b / "distill" / "student")
    model.eval()
    logits = {k: _student_rows(model, v, int(d["pad_id"])) for k, v in sets.items()}
    del model
    dc = rep["decode_compute"]
    vocab = len(tok)
    head_per_token = dc["student"]["head"] / vocab  # hidden width: one row of the head per kept token
    rows = []
    for k in (*(k for k in KS if k < len(ranked)), len(ranked), vocab):
        keep = set(range(vocab)) if k == vocab else seen if k == len(ranked) else set(ranked[:k]) | set(always)
        macs = dc["student"]["total"] - dc["student"]["head"] + head_per_token * len(keep)
        rows.append({"kept": len(keep), "from": {len(ranked): "every token seen in training", vocab: "the whole "
                     "vocabulary (the student as built)"}.get(k, f"the {k} most frequent in training"),
                     "coverage": {s: sum(t in keep for t in v) / len(v) for s, v in answer_tokens.items()},
                     "agreement": {s: _agreement(logits[s], answer_tokens[s], keep) for s in answer_tokens},
                     "student_macs": int(macs), "macs_ratio_vs_teacher": dc["teacher"]["total"] / macs})
    write("lm_vocab", {
        "build": str(b.relative_to(ROOT) if b.is_relative_to(ROOT) else b), "vocab": vocab,
        "distinct_training_tokens": len(ranked), "answer_tokens": {k: len(v) for k, v in answer_tokens.items()},
        "decode_compute": {k: dc[k] for k in ("teacher", "student", "ratio", "student_head_share")},
        "notes": args.note, "rows": sorted(rows, key=lambda r: r["kept"]),
        "what": "coverage: the share of the teacher's answer tokens (the tokens agreement is scored on) among the kept "
                "tokens; agreement: the trained student's next-token agreement with those tokens when its head keeps "
                "only the kept rows (trimmed after training, not retrained); student_macs: the student's multiply-accumulates per decoded token with a head over the kept "
                "tokens only (a model of the compute, not a timing)"})


if __name__ == "__main__":
    main()
