"""Prompts with range: instructions the teacher writes itself from seed topics (self-instruct), filtered, and
short reasoning and arithmetic problems made by code, to grow a prompt set beyond its sentence frames.

Teacher-written: for each seed topic and each viewpoint (KINDS: a plain question, a child's, a beginner's, an example
question) the teacher is asked to write one question (greedy, through `generate.generate_answers`, so a killed run
resumes); its reply is cleaned (a quoted question taken out of a preamble, else the first line, labels and quotes
stripped) and kept only when it reads as one request: 4-40 words, ending in "?", "." or "!", not an answer, a
refusal or an echo of the meta-instruction, and no near-copy (difflib ratio >= 0.7 or half its content words
shared: `heldout.independent_prompts`) of a reference prompt — the set it grows, the natural prompts that must stay
held out by source, and every prompt kept before it. The kept questions then ask, in turn, for a free answer, one
sentence, three or four sentences, steps or two examples (ANSWER_FORMS, appended by code), so answers vary in
length and kind. Each carries `"group": "<topic>"`: the template split holds out whole topics (a topic is not a
sentence frame: it has no slot words to purge).

Made by code (ARITHMETIC): arithmetic and short reasoning in frames of their own ("17+25=?", a worked
multiplication, word problems, percentages, sequences, units, a syllogism), asking for the working where the use
case is a worked explanation; each frame is a template (held out whole, its numbers and names slot words).

Pure Python except `teacher_instructions`, which runs the teacher."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable

# how the teacher is asked to write a question about {topic}: a 135M instruct model writes questions when asked for
# one (asked for an explanation, advice or a paragraph it answers or refuses instead: tried on smollm2, see
# benchmarks/results/prompts_grown.json); the viewpoints vary what it writes
KINDS = {
    "question": "Write a question about {topic}.",
    "child": "Write a question a child might ask about {topic}.",
    "beginner": "Write a question a beginner might ask about {topic}.",
    "example": "Give an example of a question someone might ask about {topic}. Write only the question.",
}
# the answer each kept question asks for, in turn (code, not the teacher): one sentence, a paragraph, steps, examples
ANSWER_FORMS = ("", " Answer in one sentence.", " Explain in three or four sentences.", " Explain step by step.",
                " Give two examples.")
# words of the meta-instructions: a reply that repeats them is an echo, not a request
_META = ("reply with", "question only", "request only", "instruction only", "phone assistant", "curious person",
         "write one", "as an ai", "question", "might ask")
# openings of a reply that answers, refuses or praises instead of asking
_NOT_A_REQUEST = ("what a ", "i'm ", "i am ", "as a ", "sure", "please provide", "how about", "why about", "why not",
                  "here is", "here's")
_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:question|request|instruction|answer|prompt|q|a)\s*[:\-]\s*)+",
                    re.IGNORECASE)
_QUOTED = re.compile(r'["“]([^"”\n]{8,300}?[?.!])["”]')
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mia",
         "Nikhil", "Omar", "Priya", "Rosa", "Sami", "Tomas", "Uma")
ITEMS = ("apples", "books", "pencils", "stickers", "marbles", "cookies", "stamps", "eggs", "cards", "shells",
         "coins", "balloons", "oranges", "tickets", "buttons")


def read_topics(path: str | Path) -> list[str]:
    """Seed topics, one per line (blank lines and # comments skipped), in file order, duplicates dropped."""
    out: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        t = line.split("#", 1)[0].strip()
        if t and t not in out:
            out.append(t)
    return out


def meta_prompts(topics: list[str], kinds: list[str] | None = None) -> list[dict[str, str]]:
    """One request-writing prompt per (topic, kind), ids `m<topic index>-<kind>`: the teacher's input."""
    kinds = list(KINDS) if kinds is None else kinds
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {bad}: valid {list(KINDS)}")
    return [{"id": f"m{i:03d}-{k}", "prompt": KINDS[k].format(topic=t), "topic": t, "kind": k}
            for i, t in enumerate(topics) for k in kinds]


def clean_instruction(text: str) -> str | None:
    """The request in a teacher's reply, or None when the reply is not one request (see the module doc)."""
    quoted = _QUOTED.search(text)  # 'A child might ask, "What is a thunderstorm?"'
    if quoted:
        line = quoted.group(1).strip()
    else:  # the first line that is not a preamble ("Sure! Here is a question:")
        line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().endswith(":")), "")
    line = _LABEL.sub("", line).strip().strip('"“”\'` ').strip()
    words = line.split()
    if not 4 <= len(words) <= 40 or line[-1:] not in "?.!":
        return None
    low = line.lower()
    if any(m in low for m in _META) or low.startswith(_NOT_A_REQUEST) or not re.search(r"[a-z]", low):
        return None
    return line[0].upper() + line[1:]


def with_answer_forms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each kept question with the answer form of its turn appended (ANSWER_FORMS, in order), as `form`."""
    return [{**r, "prompt": r["prompt"] + ANSWER_FORMS[i % len(ANSWER_FORMS)],
             "form": ANSWER_FORMS[i % len(ANSWER_FORMS)].strip() or "free"} for i, r in enumerate(rows)]


def filter_new(candidates: list[dict[str, Any]], reference: list[str], max_ratio: float = 0.7,
               max_overlap: float = 0.5, group: str | None = None, clean: bool = True,
               group_max_ratio: float | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Candidates that are no near-copy of a reference prompt or of a candidate kept before them (in order).
    `group` (a field of the candidates, e.g. "topic" or "template"): candidates of one group are held out together,
    so within a group only exact duplicates are dropped (a frame's instances share its words by design; two questions
    on one topic share its name) unless `group_max_ratio` is set (then also rewordings of a question kept in the group,
    difflib ratio >= it: what sampling one request several times makes), across groups and against the reference
    every near-copy is. `clean`: pass each
    through `clean_instruction` first (a teacher's reply; code-made prompts are taken as they are). Returns the kept
    rows (`prompt` replaced by the cleaned request) and counts of what was dropped why."""
    from edgekd.llm.heldout import independent_prompts

    kept: list[dict[str, Any]] = []
    seen: set[str] = {r.lower() for r in reference}
    why = {"not_a_request": 0, "duplicate": 0, "near_copy": 0}
    if group_max_ratio is not None:
        why["rewording_in_group"] = 0
    for c in candidates:
        p = clean_instruction(c["prompt"]) if clean else c["prompt"].strip()
        if p is None:
            why["not_a_request"] += 1
            continue
        if p.lower() in seen:
            why["duplicate"] += 1
            continue
        g = c.get(group) if group else None
        others = [*reference, *(k["prompt"] for k in kept if group is None or k.get(group) != g)]
        ok, _ = independent_prompts([p], others, max_ratio, max_overlap)
        if not ok:
            why["near_copy"] += 1
            continue
        if group_max_ratio is not None and group is not None:
            ok, _ = independent_prompts([p], [k["prompt"] for k in kept if k.get(group) == g], group_max_ratio, 1.01)
            if not ok:
                why["rewording_in_group"] += 1
                continue
        kept.append({**c, "prompt": p})
        seen.add(p.lower())
    return kept, why


def teacher_instructions(model, tok, topics: list[str], out: Path, teacher_id: str, max_new_tokens: int = 48,
                         batch_size: int = 8, kinds: list[str] | None = None,
                         progress: Callable[[int, int], None] | None = None, samples: int = 1,
                         temperature: float = 0.7, top_p: float = 0.9, seed: int = 0) -> list[dict[str, Any]]:
    """The teacher's replies to `meta_prompts(topics)`, generated into `out` (resumable), as rows
    {id, prompt: the raw reply, topic, kind, sample}; clean and filter them with `filter_new`. `teacher_id` (e.g. its
    hash) keys the file with the settings: another teacher starts it over. The first reply per request is greedy
    (in `out`); `samples` > 1 draws samples - 1 more per request (temperature / top_p, seeded: the same draws on a
    rerun) into `out`'s `.sampled` sibling, ids `<request id>~<k>`: the scale a larger prompt set needs (a GPU host's
    run) from the same seed topics."""
    from edgekd.llm.generate import ROWS, generate_answers

    metas = meta_prompts(topics, kinds)
    base = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "kind": "self-instruct", "teacher": teacher_id,
            "rows": ROWS}
    rows = generate_answers(model, tok, [{"id": m["id"], "prompt": m["prompt"]} for m in metas], out, base,
                            progress=progress)
    by_id = {r["id"]: r for r in rows}
    asked = [(m, m["id"], 0) for m in metas]
    if samples > 1:
        more = [(m, f"{m['id']}~{k}", k) for k in range(1, samples) for m in metas]
        sampled = generate_answers(
            model, tok, [{"id": i, "prompt": m["prompt"]} for m, i, _ in more], out.with_name(out.name + ".sampled"),
            base | {"sample": {"temperature": temperature, "top_p": top_p, "seed": seed}}, progress=progress)
        by_id.update({r["id"]: r for r in sampled})
        asked += more
    return [{"id": i, "prompt": by_id[i]["answer"], "topic": m["topic"], "kind": m["kind"], "sample": k}
            for m, i, k in asked if i in by_id]


def _arith(rng: random.Random) -> list[tuple[str, str]]:
    """One problem of every frame: (frame id, prompt)."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    x, y = rng.randint(3, 19), rng.randint(3, 19)
    (name, second, third), item = rng.sample(NAMES, 3), rng.choice(ITEMS)
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    big, small = max(a, b) + rng.randint(10, 60), min(a, b)
    pct, base = rng.choice((5, 10, 20, 25, 50, 75)), rng.choice((40, 60, 80, 120, 200, 240, 300, 500))
    h, d = rng.randint(6, 18), rng.randint(2, 5)
    return [
        ("arith:sum-symbols", f"{a}+{b}=?"),
        ("arith:product-steps", f"Explain step by step how to work out {x} times {y}."),
        ("arith:word-add", f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now? "
                           "Explain your reasoning."),
        ("arith:word-sub", f"A shop had {big} {item} and sold {small}. How many are left? Show your working."),
        ("arith:percent", f"What is {pct}% of {base}? Explain how you got the answer."),
        ("arith:sequence", "What number comes next in the sequence "
                           f"{', '.join(str(start + step * i) for i in range(4))}? Explain the pattern."),
        ("arith:units", f"How many minutes are there in {d} hours and {x} minutes? Show the calculation."),
        ("arith:clock", f"A bus leaves at {h}:00 and the trip takes {d} hours. When does it arrive? Explain."),
        ("arith:share", f"{name} shares {x * y} {item} equally among {x} friends. How many does each friend get? "
                        "Explain."),
        ("arith:compare", f"Which is larger, {a / 10:g} or {b / 10 + 0.05:g}? Explain why."),
        ("reason:syllogism", f"If every {item[:-1]} in a box is red and {name} takes one {item[:-1]} from the box, "
                             "what color is it? Explain your reasoning."),
        ("reason:order", f"{name} is older than {second}, who is older than {third}. Who is the youngest? Explain."),
    ]


def arithmetic_prompts(n_per_frame: int, seed: int = 0) -> list[dict[str, str]]:
    """`n_per_frame` problems of every frame of `_arith` (distinct prompts, seeded), each with its frame as template."""
    rng = random.Random(seed)
    by_frame: dict[str, list[str]] = {}
    for _ in range(n_per_frame * 20):
        for frame, p in _arith(rng):
            got = by_frame.setdefault(frame, [])
            if len(got) < n_per_frame and p not in got:
                got.append(p)
        if all(len(v) >= n_per_frame for v in by_frame.values()):
            break
    return [{"prompt": p, "template": f} for f, ps in by_frame.items() for p in ps]


__all__ = ["ANSWER_FORMS", "KINDS", "arithmetic_prompts", "clean_instruction", "filter_new", "meta_prompts", "read_topics",
           "teacher_instructions", "with_answer_forms"]
