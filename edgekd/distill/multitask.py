"""Multi-task distillation: auxiliary tasks share the student's trunk.

Each auxiliary task brings its own data and teacher; a linear head reads the student's features at
`head_from` (the shared trunk's output) and is trained with the task's KD + CE loss, scaled by the
task's weight and added to the main task's loss at every step. The main task's head (`fc`) is what
gets exported; the auxiliary heads are saved beside it. Why: related tasks regularize the shared
features, the classic argument for multi-task mixing in distillation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgekd.errors import ConfigError


@dataclass
class AuxTask:
    name: str
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    teacher: nn.Module
    head: nn.Module
    head_from: str
    weight: float
    temperature: float
    alpha: float


def relabel(y: np.ndarray, label_map: list[int] | None, task: str) -> np.ndarray:
    if label_map is None:
        return y
    if y.size and int(y.max()) >= len(label_map):
        raise ConfigError(f"task '{task}': label_map has {len(label_map)} entries but the data has label {int(y.max())}",
                          hint="give one target label per dataset label")
    return np.asarray(label_map, dtype=np.int64)[y]


def _features(student: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    from edgekd.distill.hooks import FeatureCapture, select

    raw = student.module if hasattr(student, "module") else student
    with FeatureCapture(raw, [path]) as cap:
        student(x)
    return select(cap.features[path]).flatten(1)


def build_aux_task(cfg, student: nn.Module, teacher: nn.Module, splits) -> AuxTask:
    """Make the task's head, sized by probing the student's features on the task's own inputs."""
    y = relabel(splits.y_train, cfg.label_map, cfg.name)
    n_classes = int(max(y.max(), relabel(splits.y_test, cfg.label_map, cfg.name).max())) + 1
    was = student.training
    student.eval()
    with torch.no_grad():
        feat = _features(student, torch.as_tensor(splits.x_val[:2]), cfg.head_from)
        t_out = teacher.eval()(torch.as_tensor(splits.x_val[:2]))
    student.train(was)
    if t_out.shape[-1] != n_classes:
        raise ConfigError(f"task '{cfg.name}': its teacher outputs {t_out.shape[-1]} classes, the task has {n_classes}",
                          hint="set the task teacher's num_classes (kwargs) to the task's label count")
    return AuxTask(name=cfg.name, x=splits.x_train, y=y, x_val=splits.x_val,
                   y_val=relabel(splits.y_val, cfg.label_map, cfg.name), teacher=teacher.eval(),
                   head=nn.Linear(feat.shape[1], n_classes), head_from=cfg.head_from, weight=cfg.weight,
                   temperature=cfg.temperature, alpha=cfg.alpha)


def aux_loss(task: AuxTask, student: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """weight · (α·KL(p_t^T ‖ p_s^T)·T² + (1−α)·CE) on one batch of the task."""
    logits = task.head(_features(student, xb, task.head_from))
    with torch.no_grad():
        t = task.teacher(xb)
    T = task.temperature
    soft = F.kl_div(F.log_softmax(logits / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    hard = F.cross_entropy(logits, yb)
    return task.weight * (task.alpha * soft + (1 - task.alpha) * hard)


@torch.inference_mode()
def aux_accuracy(task: AuxTask, student: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    student.eval()
    task.head.eval()
    xt = torch.as_tensor(x)
    preds = [task.head(_features(student, xt[i:i + 512], task.head_from)).argmax(1) for i in range(0, len(xt), 512)]
    task.head.train()
    return float((torch.cat(preds).numpy() == y).mean()) if preds else float("nan")
