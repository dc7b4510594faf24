"""Dataset loaders, registered by name in one explicit table.

A loader returns a `Splits` of numpy arrays: train/val carved from the train split with a seed
(unless the data brings its own val split), test kept aside for the report. Images are float32
NCHW, normalized with the split's stated mean/std (a scalar, or one value per channel / feature;
recorded so a device bundle can reproduce the preprocessing); text is int64 token ids
[N, max_length], never normalized. Each loader takes the DataConfig.

`data.unlabeled` adds a transfer set without labels to the train split: its samples carry label
-1 and `labeled=False`, the mechanism `label_fraction` uses, so the teacher never trains on them
and the student learns them from the teacher's soft labels only.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from edgekd.errors import ConfigError, DataError

LOADERS: dict[str, str] = {
    "fashion-mnist": "edgekd.data.idx:load_fashion_mnist",
    "digits": "edgekd.data.digits:load_digits",
    "rotten-tomatoes": "edgekd.data.text:load_rotten_tomatoes",
    "image-folder": "edgekd.data.images:load_image_folder",
    "csv": "edgekd.data.table:load_csv",
    "jsonl": "edgekd.data.table:load_jsonl",
    "hf-disk": "edgekd.data.table:load_hf_disk",
    "npz": "edgekd.data.npz:load_npz",
}
# Loaders of a transfer set without labels, in the layout of the same kind: (cfg, path) -> x.
UNLABELED: dict[str, str] = {
    "image-folder": "edgekd.data.images:load_unlabeled_images",
    "csv": "edgekd.data.table:load_unlabeled_csv",
    "jsonl": "edgekd.data.table:load_unlabeled_jsonl",
    "hf-disk": "edgekd.data.table:load_unlabeled_hf_disk",
    "npz": "edgekd.data.npz:load_unlabeled_npz",
}


def _call(table: dict[str, str], kind: str, *args):
    module, _, fn = table[kind].partition(":")
    return getattr(importlib.import_module(module), fn)(*args)


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    source: str
    normalization: dict = field(default_factory=dict)
    # Mask of train samples whose label the student may see (label_fraction < 1 → low-data KD;
    # data.unlabeled samples, whose label is -1).
    labeled: np.ndarray | None = None
    n_unlabeled: int = 0

    @property
    def input_shape(self) -> list[int]:
        return [1, *self.x_train.shape[1:]]

    def fingerprint(self) -> str:
        """Content hash of all arrays: keys the teacher cache and the stage cache."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        if self.labeled is not None:
            h.update(np.packbits(self.labeled).tobytes())
        return h.hexdigest()


def load(cfg) -> Splits:
    """Load the dataset named by a DataConfig, carve val, apply subsets and label fraction, and
    append the unlabeled transfer set."""
    if cfg.kind not in LOADERS:
        raise ConfigError(f"unknown dataset kind '{cfg.kind}'", hint=f"valid: {', '.join(sorted(LOADERS))}")
    x_tr, y_tr, x_te, y_te, meta = _call(LOADERS, cfg.kind, cfg)
    if len(x_tr) == 0 or len(x_te) == 0:
        raise DataError(f"dataset '{cfg.kind}' is empty ({len(x_tr)} train, {len(x_te)} test samples)",
                        hint="check the data folder")
    rng = np.random.default_rng(cfg.seed)
    given_val = meta.get("val")  # (x, y) when the data has its own validation split
    if given_val is not None and len(given_val[0]):
        tr_idx = rng.permutation(len(x_tr))
        x_va_all, y_va_all = given_val
        val_idx = np.arange(len(x_va_all))
    else:
        order = rng.permutation(len(x_tr))
        n_val = max(1, int(round(len(x_tr) * cfg.val_fraction)))
        val_idx, tr_idx = order[:n_val], order[n_val:]
        x_va_all, y_va_all = x_tr, y_tr
    if cfg.train_size is not None and cfg.train_size < len(tr_idx):
        tr_idx = tr_idx[: cfg.train_size]
        val_idx = val_idx[: max(1, min(len(val_idx), cfg.train_size // 5))]
    te_idx = np.arange(len(x_te))
    if cfg.test_size is not None and cfg.test_size < len(te_idx):
        te_idx = np.sort(rng.permutation(len(x_te))[: cfg.test_size])
    mean, std = meta["mean"], meta["std"]

    def norm(x: np.ndarray) -> np.ndarray:
        if meta.get("input") == "token_ids":
            return x.astype(np.int64)  # token ids are indices, never normalized
        m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if m.ndim == 1 and x.ndim == 4:  # per channel of NCHW images
            m, s = m.reshape(1, -1, 1, 1), s.reshape(1, -1, 1, 1)
        return ((x.astype(np.float32) - m) / s).astype(np.float32)

    labeled = None
    if cfg.label_fraction < 1.0:
        labeled = np.zeros(len(tr_idx), dtype=bool)
        k = max(1, int(round(len(tr_idx) * cfg.label_fraction)))
        labeled[rng.permutation(len(tr_idx))[:k]] = True
    x_train, y_train = norm(x_tr[tr_idx]), y_tr[tr_idx].astype(np.int64)
    n_unlabeled = 0
    if getattr(cfg, "unlabeled", None):
        x_u = unlabeled_samples(cfg, x_tr.shape[1:], meta)
        n_unlabeled = len(x_u)
        x_train = np.concatenate([x_train, norm(x_u)])
        y_train = np.concatenate([y_train, np.full(n_unlabeled, -1, dtype=np.int64)])
        base = labeled if labeled is not None else np.ones(len(tr_idx), dtype=bool)
        labeled = np.concatenate([base, np.zeros(n_unlabeled, dtype=bool)])
    return Splits(
        x_train=x_train, y_train=y_train,
        x_val=norm(x_va_all[val_idx]), y_val=y_va_all[val_idx].astype(np.int64),
        x_test=norm(x_te[te_idx]), y_test=y_te[te_idx].astype(np.int64),
        num_classes=int(meta["num_classes"]), class_names=list(meta["class_names"]),
        source=str(meta["source"]), normalization={"mean": _plain(mean), "std": _plain(std), "scale": meta.get("scale", 1.0),
                       **{k: meta[k] for k in ("tokenizer", "max_length", "input", "channels", "image_size", "columns") if k in meta}},
        labeled=labeled, n_unlabeled=n_unlabeled,
    )


def _plain(v):
    """A scalar or a list of floats (JSON-able) for the normalization record."""
    return [float(a) for a in v] if isinstance(v, (list, tuple, np.ndarray)) else float(v)


def unlabeled_samples(cfg, sample_shape: tuple[int, ...], meta: dict) -> np.ndarray:
    """The raw (un-normalized) samples of `data.unlabeled`, read like the labeled data."""
    if cfg.kind not in UNLABELED:
        raise ConfigError(f"data.unlabeled is not supported for data kind '{cfg.kind}'",
                          hint=f"kinds with an unlabeled transfer set: {', '.join(sorted(UNLABELED))}")
    x = _call(UNLABELED, cfg.kind, cfg, cfg.unlabeled, meta)
    if len(x) == 0:
        raise DataError(f"the unlabeled transfer set {cfg.unlabeled} holds no samples", hint="check data.unlabeled")
    if tuple(x.shape[1:]) != tuple(sample_shape):
        raise DataError(f"unlabeled samples have shape {list(x.shape[1:])}, the labeled data {list(sample_shape)}",
                        hint="the transfer set must be preprocessed like the labeled data (same image size, channels, columns)")
    return x


def class_index(labels: list, classes: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map raw labels (names or integers) to class indices. `classes` fixes the order (the model's
    output order); without it: sorted names, or 0..max for integer labels."""
    raw = [str(v).strip() if not isinstance(v, (int, np.integer)) else int(v) for v in labels]
    ints = all(isinstance(v, int) or (isinstance(v, str) and v.lstrip("-").isdigit()) for v in raw)
    if classes is None:
        if ints:
            vals = [int(v) for v in raw]
            if vals and min(vals) < 0:
                raise DataError(f"{where}: negative label {min(vals)}", hint="labels are class indices 0..C-1 or class names")
            classes = [str(i) for i in range((max(vals) + 1) if vals else 0)]
        else:
            classes = sorted({str(v) for v in raw})
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw):
        key = str(v)
        if key in lookup:
            out[i] = lookup[key]
        elif ints and 0 <= int(v) < len(classes):
            out[i] = int(v)  # integer labels with named classes: an index into the names
        else:
            raise DataError(f"{where}: label '{v}' (row {i + 1}) is not one of the {len(classes)} classes",
                            hint=f"classes: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}; fix the data or data.classes")
    return out, list(classes)


def seeded_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a share `fraction` held out as test, fixed by `seed`."""
    order = np.random.default_rng([seed, 7919]).permutation(n)  # its own stream: val carving uses `seed`
    n_test = max(1, int(round(n * fraction))) if n > 1 else 0
    return np.sort(order[n_test:]), np.sort(order[:n_test])
