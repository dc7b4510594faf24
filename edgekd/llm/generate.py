"""Prompts and the teacher's answers (the sequence-level KD data).

Prompts are JSONL, one object per line with a "prompt" string (and optionally an "id"); the
shipped set (`models/prompts/smollm2-prompts-grown-x3.jsonl`) is the 900 of `smollm2-prompts-900.jsonl` (the 300
written for this project, `smollm2-prompts.jsonl`, and 600 more of the same kinds: `benchmarks/make_llm_prompts.py`)
followed by 460 questions the teacher wrote from seed topics and 225 arithmetic and reasoning problems
(`benchmarks/grow_llm_prompts.py`). Answers are
generated greedily (or sampled, seeded per batch: settings["sample"]) in batches (left padding) and appended
to a JSONL file, each row the answer's text and the teacher's own tokens (`ROWS`), whose first line holds the settings
and the teacher hash; after a kill the next run keeps the finished answers and
generates only the rest. An answer is kept per prompt (same id, same text), so adding prompts to a
set extends its cache instead of starting over. Builds sharing the file take its lock for the
whole pass (`fsio.cache_lock`): one generates, the other waits and then reuses the answers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from edgekd.errors import DataError, StageError

# The grown set, not the 900 of 22 frames: held-out agreement rises with distinct answers and had not flattened at the
# largest point of the curve (benchmarks/results/lm_curve.json); before it, 900 and not the 300 hand-written prompts:
# 240 training prompts x 12 epochs overfit (validation agreement peaked at epoch 9: llm.json superseded curves)
SHIPPED = "smollm2-prompts-grown-x3.jsonl"
# a prompt's "group" (e.g. the seed topic a teacher-written request came from) is read as the template GROUP + name
GROUP = "group:"
# What an answer row holds, in the settings that name a cache file: "ids", the teacher's own answer tokens beside its
# text (decoded without the tokenizer's clean-up, for reading). Training and scoring read the ids: a re-encoding of the
# text is not what the teacher generated (SmolLM2's "\n\n" token comes back as two "\n", and the clean-up turned
# "of 'strong'" into "of'strong'"), so the teacher scored against its own answers fell short of 100%.
ROWS = "ids"


def shipped_prompts() -> Path:
    """The shipped prompt set: models/prompts/ in a source tree, edgekd/_cards/models/prompts/ in a wheel."""
    from edgekd.cards import shipped_dir

    return shipped_dir("models") / "prompts" / SHIPPED


def load_prompts(path: str | Path | None) -> list[dict[str, str]]:
    p = Path(path).expanduser() if path else shipped_prompts()
    if not p.is_file():
        raise DataError(f"prompts file {p} does not exist", hint="give a JSONL file: one {\"prompt\": \"...\"} per line")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{n}: not valid JSON ({e.msg})",
                                hint="each line must be one JSON object such as {\"prompt\": \"...\"}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise DataError(f"{p}:{n}: needs a non-empty string field 'prompt'", hint="{\"prompt\": \"...\"} per line")
            pid = str(obj.get("id", f"line{n}"))
            if pid in seen:
                raise DataError(f"{p}:{n}: duplicate id '{pid}'", hint="ids must be unique (or leave them out)")
            seen.add(pid)
            row = {"id": pid, "prompt": obj["prompt"].strip()}
            if obj.get("template") is not None:  # the sentence frame it follows: data.split: template holds these out
                row["template"] = str(obj["template"])
            elif obj.get("group") is not None:  # prompts on one topic, no shared frame: held out whole, no slot words
                row["template"] = GROUP + str(obj["group"])
            rows.append(row)
    if not rows:
        raise DataError(f"prompts file {p} is empty", hint="one {\"prompt\": \"...\"} per line")
    return rows


def chat_ids(tok, prompt: str) -> list[int]:
    """The prompt in the tokenizer's chat template (plain text when it has none)."""
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tok(prompt)["input_ids"]


def _read_done(path: Path, header: dict) -> dict[str, dict]:
    if not path.is_file():
        return {}
    done: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        first = f.readline()
        try:
            if json.loads(first).get("settings") != header["settings"]:
                return {}  # another teacher/settings: start over
        except (json.JSONDecodeError, AttributeError):
            return {}
        for line in f:
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from a kill: regenerate from here
    return done


def generate_answers(model, tok, prompts: list[dict], out: Path, settings: dict[str, Any],
                     progress: Callable[[int, int], None] | None = None,
                     log: Callable[[str], None] | None = None) -> list[dict]:
    """Greedy answers for every prompt, appended to `out` batch by batch (resumable). Cached answers
    of prompts not asked for this time stay in the file (another split or subset may ask again).

    `out` may be shared by several builds (one EDGEKD_CACHE): the whole read-generate-append runs
    under the file's `cache_lock`, so a second build waits, then finds the answers made (no line
    written twice, none interleaved); a line torn by a killed writer is dropped by the next one.

    Under torchrun (a joined process group) the ranks share the work: rank 0 holds the lock and
    decides what is left, rank r answers batches r, r+N, ... of it (the batches one process would
    make, so the same answers) into its own part file, and rank 0 appends the parts in batch order:
    the file ends as a 1-process run leaves it. A killed run's part files are read back by the next."""
    from edgekd import dist
    from edgekd.fsio import cache_lock, clean_dead_leftovers

    if dist.active():
        return _generate_sharded(model, tok, prompts, out, settings, progress, log)
    clean_dead_leftovers(out.parent)  # a rewrite cut short by a kill (`.NAME.tmp-PID` of a dead pid)
    with cache_lock(out, on_wait=(lambda: log(f"  waiting for another build generating into {out}")) if log else None):
        return _generate_locked(model, tok, prompts, out, settings, progress)


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank:05d}.part")


def _prepare(out: Path, prompts: list[dict], header: dict) -> tuple[list[dict], list[dict]]:
    """(cached rows of `prompts`, prompts still to answer). Rewrites `out` with only its valid rows (drops a
    torn line and answers to edited prompts), absorbing the part files a killed sharded run left."""
    from edgekd.fsio import write_bytes_atomic

    done = _read_done(out, header)
    parts = sorted(out.parent.glob(f"{out.name}.rank*.part"))
    for part in parts:
        done.update(_read_done(part, header))

    def cached(p: dict) -> bool:
        return p["id"] in done and done[p["id"]]["prompt"] == p["prompt"]

    rows = [done[p["id"]] for p in prompts if cached(p)]
    todo = [p for p in prompts if not cached(p)]
    asked = {p["id"] for p in prompts}
    kept = [*rows, *(r for i, r in done.items() if i not in asked)]
    write_bytes_atomic(out, "".join(json.dumps(r) + "\n" for r in [header, *kept]).encode("utf-8"))
    for part in parts:
        part.unlink(missing_ok=True)
    return rows, todo


def _generate_sharded(model, tok, prompts: list[dict], out: Path, settings: dict[str, Any],
                      progress: Callable[[int, int], None] | None, log: Callable[[str], None] | None) -> list[dict]:
    from edgekd import dist
    from edgekd.fsio import cache_lock, clean_dead_leftovers

    rank, world = dist.rank_world()
    header = {"settings": settings}
    bs = int(settings["batch_size"])
    lock = None
    err: BaseException | None = None
    rows: list[dict] = []
    todo: list[dict] = []
    try:
        if rank == 0:
            clean_dead_leftovers(out.parent)
            lock = cache_lock(out, on_wait=(lambda: log(f"  waiting for another build generating into {out}")) if log else None)
            lock.__enter__()
            rows, todo = _prepare(out, prompts, header)
    except BaseException as e:  # noqa: BLE001 - raised on every rank by dist.agree
        err = e
    try:
        dist.agree(err)
        todo = dist.broadcast(todo)
        batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
        err = None
        try:
            part = _part(out, rank)
            with open(part, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                if progress and rank == 0:
                    progress(min(len(prompts), len(rows) + done[0] * world), len(prompts))
            _answer_batches(model, tok, batches[rank::world], part, settings, tick)
        except BaseException as e:  # noqa: BLE001 - raised on every rank by dist.agree
            err = e
        dist.agree(err)
        if rank == 0:
            new = {}
            for r in range(world):
                new.update(_read_done(_part(out, r), header))
            appended = [new[p["id"]] for p in todo]
            with open(out, "a", encoding="utf-8") as f:  # in batch order: the bytes one process writes
                f.write("".join(json.dumps(r) + "\n" for r in appended))
                f.flush()
                os.fsync(f.fileno())
            for r in range(world):
                _part(out, r).unlink(missing_ok=True)
            rows = [*rows, *appended]
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    rows = dist.broadcast(rows)
    return _finish(rows, prompts)


def _finish(rows: list[dict], prompts: list[dict]) -> list[dict]:
    if not any(r["answer"] for r in rows):
        raise StageError("the teacher produced no usable answers", hint="check the prompts and generate.max_new_tokens")
    order = {p["id"]: k for k, p in enumerate(prompts)}
    return sorted(rows, key=lambda r: order.get(r["id"], len(order)))


def _generate_locked(model, tok, prompts: list[dict], out: Path, settings: dict[str, Any],
                     progress: Callable[[int, int], None] | None) -> list[dict]:
    rows, todo = _prepare(out, prompts, {"settings": settings})
    bs = int(settings["batch_size"])
    if progress:
        progress(len(rows), len(prompts))

    def tick(n: int) -> None:
        tick.done += n  # type: ignore[attr-defined]
        if progress:
            progress(len(rows) + tick.done, len(prompts))  # type: ignore[attr-defined]
    tick.done = 0  # type: ignore[attr-defined]
    rows = [*rows, *_answer_batches(model, tok, [todo[i:i + bs] for i in range(0, len(todo), bs)], out, settings, tick)]
    return _finish(rows, prompts)


def _decoding(settings: dict[str, Any], batch: list[dict]) -> dict[str, Any]:
    """generate()'s decoding arguments: greedy, or with `settings["sample"]` ({temperature, top_p, seed}) sampled
    with the torch seed set per batch from the seed and the batch's first prompt id, so a batch draws the same
    text whether it runs alone, after a resume or on another rank of a sharded run."""
    sample = settings.get("sample")
    if not sample:
        return {"do_sample": False}
    import zlib

    import torch

    torch.manual_seed(int(sample.get("seed", 0)) * 1_000_003 + zlib.crc32(str(batch[0]["id"]).encode()))
    return {"do_sample": True, "temperature": float(sample.get("temperature", 1.0)),
            "top_p": float(sample.get("top_p", 1.0)), "top_k": 0}


def _answer_batches(model, tok, batches: list[list[dict]], out: Path, settings: dict[str, Any],
                    tick: Callable[[int], None]) -> list[dict]:
    """Answer each batch (left padding; greedy unless `settings["sample"]`) and append its rows to `out`, one
    fsynced write per batch."""
    import torch

    from edgekd.llm.models import stop_ids

    stops = stop_ids(tok, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    rows: list[dict] = []
    with open(out, "a", encoding="utf-8") as f:
        for batch in batches:
            enc = [chat_ids(tok, p["prompt"]) for p in batch]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for j, e in enumerate(enc):  # left padding: every prompt ends where generation starts
                ids[j, width - len(e):] = torch.tensor(e)
                mask[j, width - len(e):] = 1
            with torch.no_grad():
                gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=int(settings["max_new_tokens"]), eos_token_id=stops,
                                     pad_token_id=pad, **_decoding(settings, batch))
            lines = []
            for j, p in enumerate(batch):
                ans = gen[j, width:].tolist()
                cut = next((k for k, t in enumerate(ans) if t in stops), None)
                finished = cut is not None
                ans = ans[:cut] if finished else ans
                # an empty answer is recorded (so a resume does not ask again) and skipped by training
                text = tok.decode(ans, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
                row = {"id": p["id"], "prompt": p["prompt"], "answer": text, "ids": ans, "tokens": len(ans),
                       "finished": finished}
                lines.append(json.dumps(row) + "\n")
                rows.append(row)
            f.write("".join(lines))  # one write per batch, fsynced: a kill tears at most the last line
            f.flush()
            os.fsync(f.fileno())
            tick(len(batch))
    return rows
