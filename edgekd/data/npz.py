"""`npz`: arrays the model takes as they are.

`data.path` is one .npz with x_train, y_train [x_val, y_val] [x_test, y_test], or a folder with
train.npz [val.npz] [test.npz] each holding x and y. Without a test split, one is held out with
data.seed. Float arrays are used as stored (float32) unless `data.mean`/`data.std` give a
per-channel (axis 1) normalization; 2-D integer arrays are token ids (int64, never normalized).
An unlabeled transfer set is an .npz with `x` (or x_train).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, DataError


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        hint="an .npz written by numpy.savez (no pickled objects)") from None


def _splits(cfg) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    if not cfg.path:
        raise ConfigError("data kind 'npz' needs data.path", hint="an .npz with x_train/y_train[/x_test/y_test], or a folder of train.npz ...")
    p = Path(cfg.path).expanduser()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if p.is_file():
        z = _read(p)
        for s in ("train", "val", "test"):
            if f"x_{s}" in z or f"y_{s}" in z:
                if f"x_{s}" not in z or f"y_{s}" not in z:
                    raise DataError(f"{p} has only one of x_{s} / y_{s}", hint="each split needs both arrays")
                out[s] = (z[f"x_{s}"], z[f"y_{s}"])
        if "train" not in out:
            raise DataError(f"{p} has no x_train / y_train arrays (arrays: {', '.join(z) or 'none'})",
                            hint="save them with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    elif p.is_dir():
        for s in ("train", "val", "test"):
            f = p / f"{s}.npz"
            if f.is_file():
                z = _read(f)
                if "x" not in z or "y" not in z:
                    raise DataError(f"{f} needs arrays x and y (has: {', '.join(z) or 'none'})", hint="numpy.savez(f, x=..., y=...)")
                out[s] = (z["x"], z["y"])
        if "train" not in out:
            raise DataError(f"{p} has no train.npz", hint="a folder with train.npz [val.npz] [test.npz], each with x and y")
    else:
        raise DataError(f"npz data not found at {p}", hint="check data.path")
    for s, (x, y) in out.items():
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{p} {s}: x has {len(x)} samples, y has shape {list(y.shape)}",
                            hint="y is one class index per sample")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{p} {s}: labels are {y.dtype}, not integers", hint="y holds class indices 0..C-1")
        if x.dtype == object:
            raise DataError(f"{p} {s}: x is an object array", hint="x must be a numeric array")
    return out, str(p)


def _is_tokens(x: np.ndarray) -> bool:
    return np.issubdtype(x.dtype, np.integer) and x.ndim == 2


def load_npz(cfg):
    from edgekd.data import seeded_split

    parts, source = _splits(cfg)
    shapes = {s: list(x.shape[1:]) for s, (x, _) in parts.items()}
    if len({tuple(v) for v in shapes.values()}) > 1:
        raise DataError(f"{source}: splits have different sample shapes {shapes}", hint="every split must hold samples of one shape")
    ys = np.concatenate([y for _, y in parts.values()])
    if ys.size and ys.min() < 0:
        raise DataError(f"{source}: negative label {int(ys.min())}", hint="y holds class indices 0..C-1")
    n_cls = len(cfg.classes) if cfg.classes else int(ys.max()) + 1
    if ys.size and ys.max() >= n_cls:
        raise DataError(f"{source}: label {int(ys.max())} is outside the {n_cls} classes of data.classes",
                        hint="fix the labels or data.classes")
    x_tr, y_tr = parts["train"]
    if "test" in parts:
        x_te, y_te = parts["test"]
    else:
        tr, te = seeded_split(len(x_tr), cfg.test_fraction, cfg.seed)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
    meta: dict[str, Any] = {"num_classes": n_cls, "class_names": list(cfg.classes) if cfg.classes else [str(i) for i in range(n_cls)],
                            "source": source, "scale": 1.0}
    if _is_tokens(x_tr):
        meta |= {"mean": 0.0, "std": 1.0, "input": "token_ids"}
    elif cfg.mean is not None:
        meta |= {"mean": list(cfg.mean), "std": list(cfg.std)}
    else:
        meta |= {"mean": 0.0, "std": 1.0}
    if "val" in parts:
        meta["val"] = parts["val"]
    return x_tr, y_tr, x_te, y_te, meta


def load_unlabeled_npz(cfg, path: str, meta: dict) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"unlabeled npz {p} does not exist", hint="an .npz with an array x")
    z = _read(p)
    for k in ("x", "x_train"):
        if k in z:
            return z[k]
    raise DataError(f"{p} has no array x (arrays: {', '.join(z) or 'none'})", hint="numpy.savez(path, x=...)")
