"""`csv`, `jsonl` and `hf-disk`: records with a label column and either a text column (text
classification, tokenized with `data.tokenizer`) or numeric feature columns (tabular).

`data.path` is one file (test held out with data.seed) or a folder with train.csv and optional
val.csv / test.csv (.jsonl for jsonl). `hf-disk` reads a folder saved by
`datasets.Dataset[Dict].save_to_disk` with `datasets.load_from_disk`; its split names default to
train / validation / test and can be renamed with `data.splits`; a ClassLabel label column gives
the class names (unless `data.classes` says otherwise).

Columns: `data.label_column` (default "label"); `data.text_column` (default "text" when present)
or `data.feature_columns`. Labels are class names or indices; `data.classes` fixes the order.
Tabular features are standardized per column with the train split's mean/std (recorded in the
normalization, so a device bundle reproduces it).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, DataError

Records = dict[str, list[Any]]  # column -> values


def _read_csv(path: Path) -> Records:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            cols = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV {path}: {e}", hint="a UTF-8 CSV file with a header row") from None
    return {c: [r.get(c) for r in rows] for c in cols}


def read_jsonl(path: Path) -> Records:
    """A JSONL file's columns: every key of any line, None where a line lacks it. DataError (exit 2) for a file
    that cannot be read or a line that is not a JSON object."""
    cols: dict[str, list[Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="a UTF-8 file with one JSON object per line") from None
    n = 0
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i} is not JSON: {e.msg}", hint="one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {i} is not a JSON object", hint="one JSON object per line") from None
        for k in obj:
            cols.setdefault(k, [None] * n)
        for k in cols:
            cols[k].append(obj.get(k))
        n += 1
    return cols


READERS = {"csv": (_read_csv, ".csv"), "jsonl": (read_jsonl, ".jsonl")}


def _files(cfg, kind: str) -> dict[str, Path]:
    if not cfg.path:
        raise ConfigError(f"data kind '{kind}' needs data.path", hint=f"a {kind} file, or a folder with train{READERS[kind][1]}")
    p = Path(cfg.path).expanduser()
    ext = READERS[kind][1]
    if p.is_file():
        return {"train": p}
    if p.is_dir():
        out = {s: p / f"{s}{ext}" for s in ("train", "val", "test") if (p / f"{s}{ext}").is_file()}
        if "train" not in out:
            raise DataError(f"{p} has no train{ext}", hint=f"give the {kind} file itself, or a folder with train{ext} [val{ext}] [test{ext}]")
        return out
    raise DataError(f"{kind} data not found at {p}", hint="check data.path")


def _columns(cfg, rec: Records, where: str, need_label: bool = True) -> tuple[str | None, list[str] | None]:
    cols = list(rec)
    listing = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")
    if need_label and cfg.label_column not in rec:
        raise DataError(f"{where} has no column '{cfg.label_column}' (columns: {listing})",
                        hint="set data.label_column to the column holding the labels")
    if cfg.feature_columns:
        missing = [c for c in cfg.feature_columns if c not in rec]
        if missing:
            raise DataError(f"{where} has no column '{missing[0]}' (columns: {listing})", hint="fix data.feature_columns")
        return None, list(cfg.feature_columns)
    text = cfg.text_column or "text"
    if text not in rec:
        raise DataError(f"{where} has no column '{text}' (columns: {listing})",
                        hint="set data.text_column (text classification) or data.feature_columns (tabular)")
    return text, None


def _features(rec: Records, cols: list[str], where: str) -> np.ndarray:
    n = len(rec[cols[0]]) if cols else 0
    x = np.empty((n, len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        for i, v in enumerate(rec[c]):
            try:
                x[i, j] = float(v)
            except (TypeError, ValueError):
                raise DataError(f"{where}: column '{c}' row {i + 1} is not a number ({v!r})",
                                hint="feature columns must be numeric; drop or encode the others") from None
    return x


def _texts(rec: Records, col: str, where: str) -> list[str]:
    out = []
    for i, v in enumerate(rec[col]):
        if v is None:
            raise DataError(f"{where}: column '{col}' row {i + 1} is empty", hint="every sample needs its text")
        out.append(" ".join(str(v).split()))
    return out


def _encode(cfg, rec: Records, text: str | None, feats: list[str] | None, where: str) -> np.ndarray:
    if feats:
        return _features(rec, feats, where)
    if not cfg.tokenizer:
        raise ConfigError("text data needs data.tokenizer", hint="the teacher's tokenizer: a Hugging Face folder or pkg:NAME")
    from edgekd.data.text import tokenize

    return tokenize(_texts(rec, text, where), cfg.tokenizer, cfg.max_length)  # type: ignore[arg-type]


def _build(cfg, parts: dict[str, Records], names: dict[str, str], source: str):
    """Arrays and meta from per-split records (train required; val/test optional)."""
    from edgekd.data import class_index, seeded_split

    text, feats = None, None
    for split, rec in parts.items():
        text, feats = _columns(cfg, rec, names[split])
    order = list(parts)
    labels = [v for s in order for v in parts[s][cfg.label_column]]
    for s in order:
        for i, v in enumerate(parts[s][cfg.label_column]):
            if v is None or (isinstance(v, str) and not v.strip()):
                raise DataError(f"{names[s]}: column '{cfg.label_column}' row {i + 1} is empty",
                                hint="every labeled sample needs a label (put unlabeled ones in data.unlabeled)")
    y_all, classes = class_index(labels, cfg.classes, source)
    xs, ys, at = {}, {}, 0
    for s in order:
        n = len(parts[s][cfg.label_column])
        xs[s], ys[s] = _encode(cfg, parts[s], text, feats, names[s]), y_all[at:at + n]
        at += n
    x_tr, y_tr = xs["train"], ys["train"]
    if "test" in xs:
        x_te, y_te = xs["test"], ys["test"]
    else:
        tr, te = seeded_split(len(x_tr), cfg.test_fraction, cfg.seed)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
    meta: dict[str, Any] = {"num_classes": len(classes), "class_names": classes, "source": source, "scale": 1.0}
    if feats:
        mu = x_tr.mean(0) if len(x_tr) else np.zeros(len(feats))
        sd = x_tr.std(0) if len(x_tr) else np.ones(len(feats))
        sd = np.where(sd > 1e-8, sd, 1.0)  # a constant column stays 0 instead of dividing by zero
        meta |= {"mean": [float(v) for v in mu], "std": [float(v) for v in sd], "columns": list(feats)}
    else:
        meta |= {"mean": 0.0, "std": 1.0, "tokenizer": cfg.tokenizer, "max_length": cfg.max_length,
                 "input": "token_ids", "columns": [text]}
    if "val" in xs:
        meta["val"] = (xs["val"], ys["val"])
    return x_tr, y_tr, x_te, y_te, meta


def _load_files(cfg, kind: str):
    files = _files(cfg, kind)
    read = READERS[kind][0]
    parts = {s: read(p) for s, p in files.items()}
    return _build(cfg, parts, {s: str(p) for s, p in files.items()}, str(Path(cfg.path).expanduser()))


def load_csv(cfg):
    return _load_files(cfg, "csv")


def load_jsonl(cfg):
    return _load_files(cfg, "jsonl")


def _unlabeled(cfg, rec: Records, where: str, meta: dict) -> np.ndarray:
    text, feats = _columns(cfg, rec, where, need_label=False)
    return _encode(cfg, rec, text, feats, where)


def load_unlabeled_csv(cfg, path: str, meta: dict) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"unlabeled CSV {p} does not exist", hint="data.unlabeled is a CSV file with the same text/feature columns")
    return _unlabeled(cfg, _read_csv(p), str(p), meta)


def load_unlabeled_jsonl(cfg, path: str, meta: dict) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"unlabeled JSONL {p} does not exist", hint="data.unlabeled is a JSONL file with the same text/feature columns")
    return _unlabeled(cfg, read_jsonl(p), str(p), meta)


# --------------------------------------------------------------------------- hf-disk

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _load_from_disk(path: Path):
    try:
        import datasets
    except ImportError:
        raise ConfigError("data kind 'hf-disk' needs the 'datasets' package, which is not installed",
                          hint="pip install datasets  (or export the data to csv/jsonl/npz)") from None
    if not path.exists():
        raise DataError(f"hf-disk data not found at {path}", hint="a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk")
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"cannot load {path} with datasets.load_from_disk: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        hint="a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk") from None


def _records(ds) -> Records:
    return {c: list(ds[c]) for c in ds.column_names}


def load_hf_disk(cfg):
    if not cfg.path:
        raise ConfigError("data kind 'hf-disk' needs data.path", hint="a folder written by save_to_disk")
    path = Path(cfg.path).expanduser()
    ds = _load_from_disk(path)
    names = {**DEFAULT_SPLITS, **(cfg.splits or {})}
    if hasattr(ds, "column_names") and isinstance(ds.column_names, list):  # one Dataset: no splits
        parts = {"train": _records(ds)}
    else:
        available = list(ds.keys())
        if names["train"] not in ds:
            raise DataError(f"{path} has no split '{names['train']}' (splits: {', '.join(available)})",
                            hint="name the train split: data.splits: {train: NAME}")
        parts = {s: _records(ds[n]) for s, n in names.items() if n in ds}
        ds = ds[names["train"]]
    # A ClassLabel column stores indices into its names: labels become those names (so data.classes
    # can reorder them like any named labels), and the names in their order are the default classes.
    label_names = getattr((getattr(ds, "features", None) or {}).get(cfg.label_column), "names", None)
    if label_names:
        for rec in parts.values():
            if cfg.label_column in rec:
                rec[cfg.label_column] = [label_names[v] if isinstance(v, int) and 0 <= v < len(label_names) else v
                                         for v in rec[cfg.label_column]]
        if cfg.classes is None:
            cfg = cfg.model_copy(update={"classes": [str(n) for n in label_names]})
    return _build(cfg, parts, {s: f"{path}[{names[s]}]" for s in parts}, str(path))


def load_unlabeled_hf_disk(cfg, path: str, meta: dict) -> np.ndarray:
    p = Path(path).expanduser()
    ds = _load_from_disk(p)
    if not (hasattr(ds, "column_names") and isinstance(ds.column_names, list)):
        ds = ds[next(iter(ds.keys()))]
    return _unlabeled(cfg, _records(ds), str(p), meta)
