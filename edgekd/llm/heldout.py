"""Held-out evaluation of a language-model student: the prompt split by template and bootstrap intervals.

A seeded shuffle of templated prompts puts near-copies of every test prompt into training ("What is 13
times 7?" vs "What is 3 times 7?"), so its agreement measures in-template recall. `template_split` holds out
WHOLE templates for validation and test, drops from training every prompt that shares a slot word with a
held-out prompt, and keeps a share of training-template prompts out of training as the in-template test,
so both figures are measured and named as what they are. `summarize` turns per-prompt scores into the
figure, a bootstrap 95% interval over prompts and a per-template breakdown.

Pure Python and numpy (no torch): the split runs in the pipeline's pre-flight.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from edgekd.errors import UserError

# words that carry no slot content: left out before a template's frame words are found, so "a" in "a magnet"
# is not a slot word shared with every other noun phrase
_STOP = frozenset(
    "a an the of in on at to for from by with about into and or is are was be do does did what which who how why "
    "where when me my i you your it its this that these those can will would should there their they them".split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def content_words(prompt: str) -> set[str]:
    return {w for w in _WORD.findall(prompt.lower()) if w not in _STOP}


def slot_words(prompts: list[dict]) -> dict[str, set[str]]:
    """Per prompt id, its slot words: its content words minus its template's frame words (those every
    prompt of the template shares). A one-prompt template has no slot words (its frame is all of it), nor has a
    group (`"group"` in the prompts file: requests on one topic share no frame, so the words they do not share are
    no slots; near-copies across groups are what filtering the prompts removes)."""
    from edgekd.llm.generate import GROUP

    by_t: dict[str, list[dict]] = {}
    for p in prompts:
        by_t.setdefault(p["template"], []).append(p)
    out: dict[str, set[str]] = {}
    for t, ps in by_t.items():
        if t.startswith(GROUP):
            out.update({p["id"]: set() for p in ps})
            continue
        words = [content_words(p["prompt"]) for p in ps]
        frame = set.intersection(*words)
        for p, w in zip(ps, words):
            out[p["id"]] = w - frame
    return out


def _fill(order: list[str], sizes: dict[str, int], target: int, taken: set[str]) -> list[str]:
    """Templates, in the seeded order, added while each brings the held-out count closer to `target`."""
    chosen, n = [], 0
    for t in order:
        if t in taken:
            continue
        if n + sizes[t] / 2 < target:  # adding it lands nearer the target than leaving it out
            chosen.append(t)
            n += sizes[t]
    return chosen


def template_split(prompts: list[dict], fraction: float, seed: int) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """train / val / test / test_in: val and test hold out whole templates (about `fraction` of the prompts
    each), test_in is about `fraction` of the prompts of training templates, never trained on; training
    prompts sharing a slot word with a val or test prompt are dropped. Every prompt carries "template".
    Returns the splits and what the report says about them."""
    sizes: dict[str, int] = {}
    for p in prompts:
        sizes[p["template"]] = sizes.get(p["template"], 0) + 1
    if len(sizes) < 3:
        raise UserError(f"{len(sizes)} template(s) are too few to hold out whole templates for validation and test",
                        hint="give prompts of at least 3 templates, or data.split: shuffle (an in-template split)")
    rng = np.random.default_rng(seed)
    order = [sorted(sizes)[i] for i in rng.permutation(len(sizes))]
    target = max(1, int(round(len(prompts) * fraction)))
    val_t = _fill(order, sizes, target, set())
    test_t = _fill(order, sizes, target, set(val_t))
    train_t = [t for t in order if t not in val_t and t not in test_t]
    if not val_t or not test_t or not train_t:
        raise UserError(f"the {len(sizes)} templates cannot be split into validation, test and training templates "
                        f"near {fraction:.0%} of the prompts each (largest template: {max(sizes.values())} prompts)",
                        hint="give prompts of more templates, a larger data.val_fraction, or data.split: shuffle")
    slots = slot_words(prompts)
    held = {t: k for k, ts in (("val", val_t), ("test", test_t)) for t in ts}
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": [], "test_in": []}
    for p in prompts:
        if p["template"] in held:
            out[held[p["template"]]].append(p)
    held_words = set().union(*(slots[p["id"]] for k in ("val", "test") for p in out[k]))
    train, purged = [], []
    for p in prompts:
        if p["template"] not in held:
            (purged if slots[p["id"]] & held_words else train).append(p)
    # the in-template test: prompts of training templates kept out of training, each template keeping one to train on
    n_in = min(target, len(train) // 2)
    left = {t: 0 for t in train_t}
    for p in train:
        left[p["template"]] += 1
    test_in: set[str] = set()
    for i in rng.permutation(len(train)):
        if len(test_in) >= n_in:
            break
        p = train[int(i)]
        if left[p["template"]] > 1:
            left[p["template"]] -= 1
            test_in.add(p["id"])
    out["test_in"] = [p for p in train if p["id"] in test_in]
    out["train"] = [p for p in train if p["id"] not in test_in]
    if not out["train"] or not out["test_in"]:
        raise UserError(f"{len(prompts)} prompts leave no training (or in-template test) prompts once whole templates "
                        f"are held out ({len(purged)} share a slot word with them)",
                        hint="give more prompts per template, or data.split: shuffle")
    info = {"kind": "template", "templates": len(sizes), "val_templates": sorted(val_t),
            "test_templates": sorted(test_t), "train_templates": sorted(train_t),
            "dropped_sharing_slot_words": len(purged),
            "why": "val and test hold out whole templates (and their slot words); test_in is in-template: prompts of "
                   "training templates never trained on"}
    return out, info


def shuffle_split(prompts: list[dict], fraction: float, seed: int) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The in-template split: a seeded shuffle, `fraction` each for val and test (test_in stays empty)."""
    rng = np.random.default_rng(seed)
    prompts = [prompts[i] for i in rng.permutation(len(prompts))]
    n_hold = max(1, int(round(len(prompts) * fraction)))
    if len(prompts) < 2 * n_hold + 2:
        raise UserError(f"{len(prompts)} prompts are too few to hold out {n_hold} for validation and {n_hold} for test",
                        hint="give more prompts or a smaller data.val_fraction")
    return ({"val": prompts[:n_hold], "test": prompts[n_hold:2 * n_hold], "train": prompts[2 * n_hold:], "test_in": []},
            {"kind": "shuffle", "why": "a seeded shuffle: test prompts may share templates with training prompts"})


def bootstrap_ci(hits: np.ndarray, tokens: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of sum(hits)/sum(tokens) over prompts resampled with replacement (the
    prompt, not the token, is the unit: a prompt's tokens are not independent of each other)."""
    hits, tokens = np.asarray(hits, dtype=float), np.asarray(tokens, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(hits), size=(samples, len(hits)))
    ratios = hits[idx].sum(1) / np.maximum(tokens[idx].sum(1), 1.0)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(nll: np.ndarray, hits: np.ndarray, tokens: np.ndarray, templates: list[str | None],
              samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Agreement and perplexity over prompts (per-prompt sums of answer-token NLL, hits and tokens), with
    bootstrap 95% intervals over prompts and the same per template."""
    nll, hits, tokens = (np.asarray(a, dtype=float) for a in (nll, hits, tokens))
    if len(tokens) == 0 or tokens.sum() == 0:
        return {"agreement": None, "perplexity": None, "tokens": 0, "prompts": 0}
    lo, hi = bootstrap_ci(hits, tokens, samples, seed)
    plo, phi = bootstrap_ci(nll, tokens, samples, seed)  # mean NLL per token, then exp
    per: dict[str, dict] = {}
    for t in sorted({str(t) for t in templates}):
        m = np.array([str(x) == t for x in templates])
        per[t] = {"agreement": float(hits[m].sum() / tokens[m].sum()), "perplexity": float(np.exp(nll[m].sum() / tokens[m].sum())),
                  "tokens": int(tokens[m].sum()), "prompts": int(m.sum())}
    return {"agreement": float(hits.sum() / tokens.sum()), "agreement_ci95": [lo, hi],
            "perplexity": float(np.exp(nll.sum() / tokens.sum())), "perplexity_ci95": [float(np.exp(plo)), float(np.exp(phi))],
            "tokens": int(tokens.sum()), "prompts": int(len(tokens)), "per_template": per}


def independent_prompts(prompts: list[str], reference: list[str], max_ratio: float = 0.7,
                        max_overlap: float = 0.5) -> tuple[list[str], list[dict[str, Any]]]:
    """The prompts no reference prompt is a near-copy of: difflib ratio below `max_ratio` AND content-word
    overlap below `max_overlap` against every reference prompt (a natural-prompt set must not measure
    in-template recall). Returns (kept, dropped with the closest reference prompt and both figures)."""
    import difflib

    ref_words = [(r, r.lower(), content_words(r)) for r in reference]
    kept, dropped = [], []
    for p in prompts:
        words = content_words(p)
        m = difflib.SequenceMatcher(a=None, b=p.lower(), autojunk=False)
        worst = None
        for r, low, rw in ref_words:
            overlap = len(words & rw) / len(words) if words else 0.0
            m.set_seq1(low)
            if overlap >= max_overlap or m.quick_ratio() >= max_ratio and m.ratio() >= max_ratio:
                worst = {"prompt": p, "closest": r, "ratio": round(m.ratio(), 3), "overlap": round(overlap, 3)}
                break
        (dropped.append(worst) if worst else kept.append(p))
    return kept, dropped
