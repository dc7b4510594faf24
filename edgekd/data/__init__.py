"""Dataset loaders, registered by name in one explicit table.

A loader returns a `Splits` of numpy arrays: train/val carved from the train split with a seed,
test kept aside for the report. Images are float32 NCHW, normalized with the split's stated
mean/std (recorded so a device bundle can reproduce the preprocessing); text is int64 token ids
[N, max_length], never normalized. Each loader takes the DataConfig.
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
}


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
    # Mask of train samples whose label the student may see (label_fraction < 1 → low-data KD).
    labeled: np.ndarray | None = None

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
    """Load the dataset named by a DataConfig, carve val, apply subsets and label fraction."""
    if cfg.kind not in LOADERS:
        raise ConfigError(f"unknown dataset kind '{cfg.kind}'", hint=f"valid: {', '.join(sorted(LOADERS))}")
    module, _, fn = LOADERS[cfg.kind].partition(":")
    x_tr, y_tr, x_te, y_te, meta = getattr(importlib.import_module(module), fn)(cfg)
    if len(x_tr) == 0 or len(x_te) == 0:
        raise DataError(f"dataset '{cfg.kind}' is empty ({len(x_tr)} train, {len(x_te)} test samples)",
                        hint="check the data folder")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(x_tr))
    n_val = max(1, int(round(len(x_tr) * cfg.val_fraction)))
    val_idx, tr_idx = order[:n_val], order[n_val:]
    if cfg.train_size is not None and cfg.train_size < len(tr_idx):
        tr_idx = tr_idx[: cfg.train_size]
        val_idx = val_idx[: max(1, min(len(val_idx), cfg.train_size // 5))]
    te_idx = np.arange(len(x_te))
    if cfg.test_size is not None and cfg.test_size < len(te_idx):
        te_idx = np.sort(rng.permutation(len(x_te))[: cfg.test_size])
    mean, std = float(meta["mean"]), float(meta["std"])

    def norm(x: np.ndarray) -> np.ndarray:
        if meta.get("input") == "token_ids":
            return x.astype(np.int64)  # token ids are indices, never normalized
        return ((x.astype(np.float32) - mean) / std).astype(np.float32)

    labeled = None
    if cfg.label_fraction < 1.0:
        labeled = np.zeros(len(tr_idx), dtype=bool)
        k = max(1, int(round(len(tr_idx) * cfg.label_fraction)))
        labeled[rng.permutation(len(tr_idx))[:k]] = True
    return Splits(
        x_train=norm(x_tr[tr_idx]), y_train=y_tr[tr_idx].astype(np.int64),
        x_val=norm(x_tr[val_idx]), y_val=y_tr[val_idx].astype(np.int64),
        x_test=norm(x_te[te_idx]), y_test=y_te[te_idx].astype(np.int64),
        num_classes=int(meta["num_classes"]), class_names=list(meta["class_names"]),
        source=str(meta["source"]), normalization={"mean": mean, "std": std, "scale": meta.get("scale", 1.0),
                       **{k: meta[k] for k in ("tokenizer", "max_length", "input") if k in meta}},
        labeled=labeled,
    )
