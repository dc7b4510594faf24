"""IDX (MNIST-format) files: Fashion-MNIST from the Debian package `dataset-fashion-mnist`, a folder
given by `data.path`, or `$EDGEKD_DATA`."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgekd.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "install it with `apt-get install -y dataset-fashion-mnist`, or pass --set data.path=DIR / EDGEKD_DATA=DIR holding the four idx(.gz) files"
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): magic 0x0000 08 NDIM, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file {path}: {e}", hint="the file is corrupt or truncated; reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an idx uint8 file (bad magic number)", hint="expected the standard MNIST idx format")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header)", hint="reinstall the dataset")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, its header promises {expected}",
                        hint="the file is truncated or corrupt; reinstall the dataset")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def resolve_dir(path: str | None) -> Path:
    candidates = [Path(path).expanduser()] if path else []
    if not path and os.environ.get("EDGEKD_DATA"):
        candidates.append(Path(os.environ["EDGEKD_DATA"]).expanduser())
    if not path:
        candidates.append(DEBIAN_DIR)
    for c in candidates:
        if c.is_dir() and all(_find(c, s) for s in FILES.values()):
            return c
    where = ", ".join(str(c) for c in candidates)
    raise DataError(f"Fashion-MNIST not found (looked in {where})", hint=INSTALL_HINT)


def load_fashion_mnist(cfg):
    folder = resolve_dir(cfg.path)
    arrays = {k: read_idx(_find(folder, s)) for k, s in FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split} images {x.shape} and labels {y.shape} do not match",
                            hint="the files are from different datasets or corrupt")
        if y.size and y.max() > 9:
            raise DataError(f"Fashion-MNIST {split} labels go up to {y.max()}, expected 0..9", hint="corrupt label file")
    meta = {"mean": 0.2860 * 255, "std": 0.3530 * 255, "num_classes": 10, "class_names": CLASS_NAMES,
            "source": str(folder), "scale": 1.0}
    return (arrays["x_train"][:, None], arrays["y_train"], arrays["x_test"][:, None], arrays["y_test"], meta)
