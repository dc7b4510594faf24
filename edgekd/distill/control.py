"""The labels-only control: what the student reaches without the teacher.

A distilled student's accuracy alone does not say what distillation bought. The control is the same
student (architecture, initial weights, including a cut taken from the teacher), trained for the
same epochs on the same data, batches, augmentation, optimiser and seed, with the loss set reduced
to the recipe's hard-label term at weight 1. The teacher is never consulted during its training.
Auxiliary tasks, extra teachers, per-sample weighting and born-again generations belong to the
distillation recipe, so the control has none of them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

CONTROL_NOTE = ("same student, initial weights, epochs, data, batches and seed as the KD run; "
                "loss: the recipe's hard_label term alone (weight 1), no teacher")


def control_losses(losses: list[Any]) -> list[dict[str, Any]]:
    """The recipe's hard_label term (its options, e.g. label smoothing) at weight 1, or plain CE."""
    for lc in losses:
        raw = lc.model_dump() if hasattr(lc, "model_dump") else dict(lc)
        if raw.get("kind") == "hard_label":
            raw.update(weight=1.0)
            raw.pop("weight_schedule", None)  # a ramp shaped around a KD term means nothing alone
            return [raw]
    return [{"kind": "hard_label", "weight": 1.0}]


def control_config(dc: Any) -> Any:
    """The distill config of the control run: same training settings, labels-only loss set."""
    from edgekd.config import LossConfig, TeacherCacheConfig

    return dc.model_copy(update={"losses": [LossConfig(**x) for x in control_losses(dc.losses)],
                                 "teacher_cache": TeacherCacheConfig(enabled=False), "tasks": [],
                                 "weighting": None, "born_again_generations": 0, "extra_teachers": [],
                                 "teacher_weights": None})


def train_control(student: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                  y_val: np.ndarray, dc: Any, *, labeled: np.ndarray | None = None, checkpoint: Any = None,
                  progress: Any = None, rank: int = 0, world_size: int = 1, epoch_inputs: Any = None) -> Any:
    """Train `student` (freshly built with the KD student's seed and init) as the control.

    Goes through the same trainer and the same LossSet path as distillation, so the only
    difference from the KD run is the loss. `epoch_inputs`: the KD run's augmented views (without
    logits) when it trained on cached views. Returns the TrainResult (best-on-validation weights).
    """
    import torch

    from edgekd.distill.losses import build_losses
    from edgekd.distill.trainer import train

    cc = control_config(dc)
    loss_set = build_losses(cc.losses, student, None, torch.as_tensor(x_val[:8]))
    return train(student, x_train, y_train, x_val, y_val, cc, loss_set=loss_set, labeled=labeled,
                 checkpoint=checkpoint, progress=progress, description="control (labels only)", amp=dc.amp,
                 rank=rank, world_size=world_size, epoch_inputs=epoch_inputs)


def control_metrics(res: Any, dc: Any, *, accuracy: float, accuracy_torch: float, kd_accuracy: float,
                    measured_with: str, student_init: Any = None) -> dict[str, Any]:
    """The distill stage's `control` entry (report: training.control)."""
    last = res.history[-1] if res.history else {}
    return {"accuracy": accuracy, "kd_accuracy": kd_accuracy, "measured_with": measured_with,
            "kd_gain_points": 100.0 * (kd_accuracy - accuracy),
            "accuracy_torch": accuracy_torch, "val_accuracy": res.best_val_accuracy, "best_epoch": res.best_epoch,
            "epochs": len(res.history), "train_seconds": res.seconds, "losses": control_losses(dc.losses),
            "final_train_loss": last.get("loss_hard_label"), "student_init": student_init,
            "history": [{k: v for k, v in h.items() if k in ("epoch", "val_accuracy", "loss_hard_label", "seconds")}
                        for h in res.history],
            "note": CONTROL_NOTE}
