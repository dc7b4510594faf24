"""The files a model comes from, read without torch: the shipped teacher's sha256 check and the content
hashes that key the stages (`fingerprint`). The checks run before any stage, so a missing or altered file
is exit 2 in a fraction of a second (edgekd/zoo/sources.py builds the models and imports torch)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError

RETRAIN_HINT = "restore the file (git checkout, or reinstall edgekd), or train the teacher: --set teacher.retrain=true"


def check_shipped(ref, path: Path | None = None) -> Path:
    """A teacher's shipped weights file (`path`, default the card's) after checking it exists and
    its sha256 is the one the card records: a one-line ConfigError otherwise, before any byte of it
    is unpickled or loaded."""
    p = path if path is not None else ref.shipped_file()
    named = ref.shipped.path
    if not p.is_file():
        raise ConfigError(f"shipped teacher weights {named} are missing ({p})", hint=RETRAIN_HINT)
    h = hashlib.sha256()
    sha_file(p, h)
    if h.hexdigest() != ref.shipped.sha256:
        raise ConfigError(f"shipped teacher weights {named} fail their check: sha256 {h.hexdigest()[:16]}..., "
                          f"the card expects {ref.shipped.sha256[:16]}...", hint=RETRAIN_HINT)
    return p


def sha_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def fingerprint(ref) -> dict[str, str]:
    """Content hashes of the files a model comes from (weights, ONNX, HF folder, factory module
    source), so a stage keyed on them re-runs when the user's files change under the same path."""
    out: dict[str, str] = {}

    def sha_path(p: Path) -> str:
        h = hashlib.sha256()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            sha_file(f, h)
        return h.hexdigest()

    if ref.weights and Path(ref.weights).expanduser().is_file():
        out["weights"] = sha_path(Path(ref.weights).expanduser())
    if ref.onnx and Path(ref.onnx).expanduser().is_file():
        out["onnx"] = sha_path(Path(ref.onnx).expanduser())
    if ref.hf:
        from edgekd.zoo.text import resolve_hf

        p = Path(resolve_hf(ref.hf))
        if p.is_dir():
            out["hf"] = sha_path(p)
    if ref.torchvision:  # the model's code is the installed package's: its version keys the stages
        from edgekd.zoo.vision import torchvision_version

        out["torchvision"] = torchvision_version() or "absent"
    if ref.timm:
        from edgekd.zoo.vision import package_version

        out["timm"] = package_version("timm") or "absent"
    if ref.factory:
        module_name = ref.factory.partition(":")[0]
        try:
            import importlib.util

            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            out["factory_source"] = sha_path(Path(spec.origin))
    return out
