"""`image-folder`: the user's photos in class subfolders, decoded with Pillow.

Layouts (`data.path`):
  ROOT/train/<class>/*.png  [ROOT/val/<class>/...]  [ROOT/test/<class>/...]
  ROOT/<class>/*.png         (no split folders: test is held out with data.seed, val carved from train)
Classes are the train folder names, sorted (torchvision's ImageFolder order), unless `data.classes`
names them in the model's output order. Images are resized to `data.image_size` [H, W] (bilinear)
when given, else they must all share one size; `data.channels` 1 or 3 (default: 1 when every image
is grayscale). Arrays are the raw 0..255 pixel values, float32 NCHW; the stated normalization maps
them to what the model was trained on: pixels scaled to [0, 1] by default (torchvision's ToTensor),
or ((x / 255) - mean) / std with `data.mean`/`data.std` per channel.

An unlabeled transfer set (`data.unlabeled`) is any folder of images, searched recursively.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, DataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
VAL_NAMES = ("val", "valid", "validation")


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _root(cfg) -> Path:
    if not cfg.path:
        raise ConfigError("data kind 'image-folder' needs data.path", hint="e.g. data.path: ./photos (class subfolders)")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", hint="data.path is a folder of class subfolders (or train/ val/ test/)")
    return root


def scan_classes(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} of a folder of class subfolders; an empty class is an error."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class subfolders",
                        hint="put each class's images in its own subfolder: photos/cat/*.png, photos/dog/*.png")
    out: dict[str, list[Path]] = {}
    for d in classes:
        files = sorted(p for p in d.rglob("*") if is_image(p))
        if not files:
            raise DataError(f"class folder {d} has no images",
                            hint=f"add images ({', '.join(sorted(IMAGE_EXTS))}) or remove the folder")
        out[d.name] = files
    return out


def layout(root: Path) -> dict[str, Path]:
    """{split: folder}: train (always), val and test when the data has them."""
    if (root / "train").is_dir():
        splits = {"train": root / "train"}
        for name in VAL_NAMES:
            if (root / name).is_dir():
                splits["val"] = root / name
                break
        if (root / "test").is_dir():
            splits["test"] = root / "test"
        return splits
    return {"train": root}


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        hint="the file is corrupt or not an image; delete or replace it") from None
    return im


def image_mode(path: Path) -> str:
    """Pillow's mode from the header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode
    except Exception as e:  # any decoder failure is this file's fault: name it
        raise DataError(f"cannot read image {path}: {type(e).__name__}", hint="the file is corrupt or not an image; delete or replace it") from None


def decode(files: list[Path], channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Raw pixels float32 [N, C, H, W] (0..255); all images resized to `size` or sharing one size."""
    from PIL import Image

    out: np.ndarray | None = None
    first: tuple[Path, tuple[int, int]] | None = None
    for i, p in enumerate(files):
        im = _open(p)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16-bit / float grayscale: scale into 0..255 like 8-bit images
            a = np.asarray(im, dtype=np.float32)
            im = Image.fromarray(np.clip(a / (256.0 if a.max() > 255 else 1.0), 0, 255).astype(np.uint8))
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if channels == 1 else a.transpose(2, 0, 1)
        if out is None:
            first = (p, a.shape[1:])
            out = np.empty((len(files), *a.shape), dtype=np.uint8)
        elif a.shape != out.shape[1:]:
            raise DataError(f"images differ in size: {first[0].name} is {first[1][0]}x{first[1][1]}, "  # type: ignore[index]
                            f"{p} is {a.shape[1]}x{a.shape[2]}",
                            hint="set data.image_size: [height, width] to resize them all")
        out[i] = a
    if out is None:
        return np.zeros((0, channels, *(size or (1, 1))), dtype=np.float32)
    return out.astype(np.float32)


def _channels(cfg, files: list[Path]) -> int:
    if cfg.channels is not None:
        return int(cfg.channels)
    return 1 if all(image_mode(p) in GRAY_MODES for p in files) else 3


def normalization(cfg, channels: int) -> tuple[float | list[float], float | list[float]]:
    """(mean, std) in raw pixel units (0..255) from the card's [0, 1]-scaled mean/std."""
    if cfg.mean is None:
        return 0.0, 255.0  # pixels scaled to [0, 1], as torchvision's ToTensor
    if len(cfg.mean) not in (1, channels):
        raise ConfigError(f"data.mean has {len(cfg.mean)} values, the images {channels} channel(s)",
                          hint="give one mean/std per channel (pixels scaled to [0, 1]), or set data.channels")
    mean = [m * 255.0 for m in cfg.mean] * (channels if len(cfg.mean) == 1 else 1)
    std = [s * 255.0 for s in cfg.std] * (channels if len(cfg.std) == 1 else 1)
    return mean, std


def load_image_folder(cfg):
    from edgekd.data import seeded_split

    root = _root(cfg)
    parts = {split: scan_classes(folder) for split, folder in layout(root).items()}
    classes = list(cfg.classes) if cfg.classes else sorted(parts["train"])
    known = set(classes)
    for split, found in parts.items():
        extra = sorted(set(found) - known)
        if extra:
            raise DataError(f"{split} folder has class folder(s) {', '.join(extra[:5])} that are not among the classes "
                            f"({', '.join(classes[:10])})", hint="name every class in data.classes, or fix the folders")
    all_files = [p for found in parts.values() for files in found.values() for p in files]
    channels = _channels(cfg, all_files)
    size = tuple(cfg.image_size) if cfg.image_size else None

    def arrays(found: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray]:
        files = [p for c in classes for p in found.get(c, [])]
        labels = np.asarray([i for i, c in enumerate(classes) for _ in found.get(c, [])], dtype=np.int64)
        return decode(files, channels, size), labels

    x_tr, y_tr = arrays(parts["train"])
    if "test" in parts:
        x_te, y_te = arrays(parts["test"])
    else:
        tr, te = seeded_split(len(x_tr), cfg.test_fraction, cfg.seed)
        x_tr, y_tr, x_te, y_te = x_tr[tr], y_tr[tr], x_tr[te], y_tr[te]
    mean, std = normalization(cfg, channels)
    meta = {"mean": mean, "std": std, "num_classes": len(classes), "class_names": classes,
            "source": str(root), "scale": 1.0, "channels": channels, "image_size": list(x_tr.shape[2:])}
    if "val" in parts:
        meta["val"] = arrays(parts["val"])
    return x_tr, y_tr, x_te, y_te, meta


def load_unlabeled_images(cfg, path: str, meta: dict) -> np.ndarray:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"unlabeled image folder {folder} does not exist", hint="data.unlabeled is a folder of images (any layout)")
    files = sorted(p for p in folder.rglob("*") if is_image(p))
    if not files:
        raise DataError(f"unlabeled folder {folder} has no images", hint=f"image files: {', '.join(sorted(IMAGE_EXTS))}")
    size = tuple(cfg.image_size) if cfg.image_size else tuple(meta["image_size"])
    return decode(files, int(meta["channels"]), size)  # type: ignore[arg-type]
