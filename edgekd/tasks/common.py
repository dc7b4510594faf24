"""Build helpers the task modules share: the build's data and models, where the host profiles, checkpoints.

Task modules (classification.py, text_generation.py) import from here; nothing here imports a task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekd.pipeline import BuildContext, stable_hash

def splits(ctx: BuildContext):
    from edgekd.data import load

    return ctx.memo("splits", lambda: load(ctx.recipe.data))


def data_fingerprint(ctx: BuildContext) -> str:
    return ctx.memo("fingerprint", lambda: splits(ctx).fingerprint())


def build_model(ref, seed: int | None = None, log: Callable[[str], None] | None = None) -> Any:
    """A fresh model for a ModelRef: zoo arch, the user's factory, an HF folder or an ONNX file
    (with `weights` loaded when the card gives them)."""
    from edgekd.zoo.sources import build_model as build_ref

    if seed is not None:  # initial weights are part of a deterministic run
        from edgekd.distill.trainer import seed_everything

        seed_everything(seed)
    return build_ref(ref, log=log)


def load_model(ref, state_path: Path, log: Callable[[str], None] | None = None):
    """The model a stage wrote (`teacher.pt`/`student.pt` state dict, or the teacher's .onnx file)."""
    import torch

    if ref.onnx:
        from edgekd.zoo.sources import OnnxModel

        return OnnxModel(state_path).eval()
    # the state file replaces the card's initial weights: build without reading them twice
    m = build_model(ref.model_copy(update={"weights": None}), log=log)
    m.load_state_dict(torch.load(state_path, weights_only=True))
    return m.eval()


def host_profile_device(ctx: BuildContext) -> tuple[str, str, Any]:
    """(measured_on, machine name, DeviceConfig) of a model profiled on this host's CPU: the target
    family's answer (the device on cpu; elsewhere the host stands in, with this host's figures)."""
    from edgekd.targets import family

    return family(ctx.target).host_cpu_profiled(ctx.target)


def checkpoint_path(ctx: BuildContext, stage: str, key_material: Any) -> Path:
    d = ctx.out / ".checkpoints"
    d.mkdir(exist_ok=True)
    return d / f"{stage}-{stable_hash(key_material)[:16]}.pt"
