"""scikit-learn's bundled 8×8 digits (1,797 samples): the fast recipe for tests and low-data KD."""
from __future__ import annotations

import numpy as np


def load_digits(cfg):
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = d.images.reshape(len(d.images), -1).astype(np.float32)  # [N, 64], values 0..16
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(1234)  # fixed test split, independent of the recipe seed
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    te, tr = order[:n_test], order[n_test:]
    meta = {"mean": 4.88, "std": 6.02, "num_classes": 10, "class_names": [str(i) for i in range(10)],
            "source": "sklearn.datasets.load_digits", "scale": 1.0}
    return x[tr], y[tr], x[te], y[te], meta
