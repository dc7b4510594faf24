"""The natural-prompt evaluation of a text-generation build (stage `natural`, after distill).

The split's held-out templates say how the student does on frames it never trained on; they are still the
prompt set's own kind of prompt. This stage scores the student on prompts held out by SOURCE: a set written
apart from the training prompts (`evaluate.natural_prompts`; the shipped prompt set comes with
models/prompts/smollm2-natural.jsonl), of which every prompt a training prompt is a near-copy of is left out
here, against this build's prompts (edgekd.llm.heldout.independent_prompts). The teacher answers the rest
with the build's decoding settings (cached like the training answers, in their own file); the student, and
the teacher against its own answers as the sanity row, are scored by teacher forcing with bootstrap 95%
intervals over prompts. Nothing here feeds a choice: no epoch, candidate or student is picked on it.

It also scores the language the student kept: perplexity and next-token accuracy of student and teacher on
held-out natural text (`evaluate.natural_text` Rotten Tomatoes test-bucket snippets, held out by movie from the
general text a build may train on: edgekd/llm/natural_text.py), and their ratio.

Its key holds the teacher, the answers' settings, the distilled student and the prompt file's sha256, not the
training stages' cards: adding or changing the natural set never retrains anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekd.errors import UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult

NATURAL = "smollm2-natural.jsonl"


def natural_file(ctx: BuildContext) -> Path | None:
    """The natural-prompt file the recipe asks for, None for none. UserError (exit 2) for a missing file."""
    ev, data = ctx.recipe.evaluate, ctx.recipe.data
    if ev.natural_prompts is None:
        return None
    if ev.natural_prompts == "auto":
        if data.path is not None:  # a user's own prompts: generic assistant prompts are not their users' prompts
            return None
        from edgekd.llm.generate import shipped_prompts

        return shipped_prompts().parent / NATURAL
    p = Path(ev.natural_prompts).expanduser()
    if not p.is_file():
        raise UserError(f"evaluate.natural_prompts: {p} does not exist",
                        hint="give a JSONL file of prompts ({\"prompt\": \"...\"} per line), or set it to null")
    return p


def _natural_text_cfg(ctx: BuildContext) -> dict:
    """The natural-text evaluation's settings; the corpus's sha256 (None: not installed, the stage says so), so
    installing it later scores the build again."""
    from edgekd.fsio import sha256_file
    from edgekd.llm.natural_text import corpus_available

    ev = ctx.recipe.evaluate
    if ev.natural_text is None:
        return {"natural_text": None}
    from edgekd.data.text import corpus_path

    corpus = sha256_file(corpus_path(None)) if corpus_available() is None else None
    return {"natural_text": ev.natural_text, "natural_text_max_length": ev.natural_text_max_length, "corpus": corpus,
            "splits": ["test", "val"]}


def _natural_cfg(ctx: BuildContext) -> dict:
    from edgekd.fsio import sha256_file
    from edgekd.llm.generate import load_prompts

    text = _natural_text_cfg(ctx)
    f = natural_file(ctx)
    if f is None:
        return {"natural_prompts": None, **text}
    load_prompts(f)  # validated at pre-flight: a bad line fails in seconds, not after training
    ev = ctx.recipe.evaluate
    return {"natural_prompts": str(f), "sha256": sha256_file(f), "max_prompts": ev.max_prompts,
            "max_ratio": ev.max_ratio, "max_overlap": ev.max_overlap, "max_length": ctx.recipe.data.max_length, **text}


def natural_text_metrics(inputs: dict[str, StageResult], ctx: BuildContext) -> dict[str, Any] | None:
    """The student's and the teacher's perplexity and next-token accuracy on held-out natural text (Rotten Tomatoes
    test-bucket snippets: edgekd.llm.natural_text), and the ratio; under `val` the same on the validation snippets
    (other movies). None when evaluate.natural_text is null, and {"skipped": why} without the corpus."""
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.natural_text import corpus_available, evaluate_natural_text
    from edgekd.llm.parallel import train_device
    from edgekd.tasks.text_generation.data import _teacher_info

    ev = ctx.recipe.evaluate
    if ev.natural_text is None:
        return None
    why = corpus_available()
    if why is not None:
        return {"skipped": why}
    from edgekd.data.text import corpus_path
    from edgekd.fsio import sha256_file, write_json_atomic
    from edgekd.pipeline import stable_hash

    info = _teacher_info(inputs["teacher"])
    pad = inputs["distill"].metrics["pad_id"]
    dev = train_device()  # a GPU host's GPU, else the CPU
    student, tok = load_causal_lm(inputs["distill"].dir / "student")
    student.to(dev)
    teacher: list = []  # loaded once, only when a split's teacher scores are not cached
    corpus = sha256_file(corpus_path(None))

    def scored(split: str) -> dict[str, Any]:
        # the teacher's score depends on the teacher and these settings only: made once per cache, not per build
        key = {"teacher": info["hash"], "snippets": ev.natural_text, "max_length": ev.natural_text_max_length,
               "corpus": corpus, "pad": pad}
        if split != "test":  # the evaluation's key is what it was: caches made before a validation split stay valid
            key["split"] = split
        known_file = ctx.cache_dir / "natural-text" / f"{stable_hash(key)[:20]}.json"
        known = {"teacher": json.loads(known_file.read_text())} if known_file.is_file() else None
        models: dict[str, Any] = {"student": student}
        if known is None:
            if not teacher:
                teacher.append(load_causal_lm(info["folder"])[0].to(dev))
            models["teacher"] = teacher[0]
        out = evaluate_natural_text(models, tok, ev.natural_text, ev.natural_text_max_length, pad, known=known,
                                    split=split)
        if known is None:
            known_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(known_file, out["teacher"])
        out["teacher_cached"] = known is not None
        return out

    # the evaluation's snippets, and beside them the validation's (other movies): a choice about general text is
    # made on the validation ratio (benchmarks/bench_general_text.py), so this one stays a test figure
    out = scored("test")
    out["val"] = scored("val")
    return out


def stage_natural(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import time

    from edgekd.llm.generate import generate_answers, load_prompts
    from edgekd.llm.heldout import independent_prompts, summarize
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.parallel import train_device
    from edgekd.llm.sequences import build_examples
    from edgekd.pipeline import stable_hash
    from edgekd.tasks.text_generation.data import _teacher_info
    from edgekd.tasks.text_generation.distill import score_examples

    text = natural_text_metrics(inputs, ctx)
    f = natural_file(ctx)
    if f is None:
        why = ("evaluate.natural_prompts is null" if ctx.recipe.evaluate.natural_prompts is None else
               "your own prompts (data.path) come with no natural-prompt set: name one in evaluate.natural_prompts")
        return StageOutput({}, {"natural_prompts": None, "why": why, "natural_text": text})
    ev = ctx.recipe.evaluate
    asked = load_prompts(f)
    built = [json.loads(ln)["prompt"] for ln in inputs["generate"].path("answers").read_text(encoding="utf-8").splitlines()]
    kept, dropped = independent_prompts([p["prompt"] for p in asked], built, ev.max_ratio, ev.max_overlap)
    keep = set(kept)
    prompts = [p for p in asked if p["prompt"] in keep][: ev.max_prompts]
    metrics: dict[str, Any] = {
        "natural_prompts": str(f), "asked": len(asked), "near_copies_left_out": len(dropped),
        "left_out": dropped[:20], "scored_prompts": len(prompts),
        "thresholds": {"max_ratio": ev.max_ratio, "max_overlap": ev.max_overlap}, "natural_text": text}
    if not prompts:
        raise UserError(f"evaluate.natural_prompts: every prompt of {f.name} is a near-copy of a training prompt",
                        hint="write prompts apart from the training set, or set evaluate.natural_prompts: null")
    info = _teacher_info(inputs["teacher"])
    teacher, tok = load_causal_lm(info["folder"])
    teacher.to(train_device())  # answers and scores on a GPU host's GPU, else the CPU
    settings = inputs["generate"].metrics["settings"]
    cache = ctx.cache_dir / "generations" / f"{stable_hash({**settings, 'set': 'natural'})[:20]}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = generate_answers(teacher, tok, prompts, cache, settings, log=ctx.log)
    metrics["generate_seconds"] = time.perf_counter() - t0
    dm = inputs["distill"].metrics
    examples = build_examples(tok, rows, ctx.recipe.data.max_length, dm["end_id"])
    if not examples:
        raise UserError("the teacher gave no answer to any natural prompt", hint="check the teacher's chat template")
    with open(wd / "answers.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    templates = ["natural"] * len(examples)
    pad = dm["pad_id"]

    def score(model) -> dict:
        s = summarize(*score_examples(model, examples, pad), templates)
        s.pop("per_template", None)  # one template
        return s

    metrics["teacher"] = score(teacher)  # the sanity row: ~100% against its own greedy answers
    del teacher
    student, _ = load_causal_lm(inputs["distill"].dir / "student")
    metrics["student"] = score(student.to(train_device()))
    metrics["mean_answer_tokens"] = sum(r["tokens"] for r in rows) / len(rows)
    return StageOutput({"answers": "answers.jsonl"}, metrics)
