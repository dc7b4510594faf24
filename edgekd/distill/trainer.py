"""The training loop shared by teacher training, distillation and sequence-level KD of language models.

`fit` is the one epoch loop; callers hand it their batches and a per-batch loss. `train` is the
classifier's use of it on arrays: with no teacher it trains on labels (CE with label smoothing);
with a teacher and a LossSet it distills. Text generation (edgekd.llm.sequences) batches token
sequences and takes the loss at answer tokens, through the same `fit`. AdamW + cosine schedule
with warm-up, gradient clipping, optional bf16 autocast (classifiers), best-on-validation weights,
early stopping, and a checkpoint after every epoch that a killed run resumes from exactly (model,
optimizer, scheduler, RNG states).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from edgekd.errors import StageError, UserError


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_val_accuracy: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment_images(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels and horizontal flip, per sample (NCHW only)."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    # Group samples by shift: at most (2p+1)^2 slices instead of n.
    for sx in range(2 * pad + 1):
        for sy in range(2 * pad + 1):
            idx = ((dx == sx) & (dy == sy)).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = padded[idx, :, sy:sy + h, sx:sx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.inference_mode()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` on all of `x`, in eval mode."""
    model.eval()
    xt = torch.as_tensor(x)
    outs = [model(xt[i:i + batch_size]) for i in range(0, len(xt), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x).argmax(1).numpy() == y).mean())


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a resume checkpoint durably: temp file, fsync, rename, fsync the folder.

    The payload must hold only tensors and plain data, so `load_checkpoint` can read it with
    `weights_only=True`.
    """
    from edgekd.fsio import replace_durable

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    replace_durable(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with torch's safe unpickler: tensors and plain data only, never code.

    A build folder can come from elsewhere (a CI cache, a colleague's disk); a checkpoint that
    carries any other pickled object is refused rather than executed.
    """
    import pickle

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise UserError(f"refusing to load checkpoint {path}: it holds more than tensors and plain data ({first[:160]})",
                        hint="it may run code when unpickled; delete it to restart that training from scratch") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"checkpoint {path} is unreadable: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}",
                        hint="delete it to restart that training from scratch") from None
    if not isinstance(ck, dict):
        raise UserError(f"checkpoint {path} is not an edgekd checkpoint", hint="delete it to restart that training from scratch")
    return ck


def epoch_line(progress: Any, text: str) -> None:
    """One plain line per epoch when the log is not a terminal (CI, `make demo > log`), where rich's
    live progress bar renders nothing; on a terminal the bar already shows it."""
    console = getattr(progress, "console", None)
    if console is not None and not console.is_terminal:
        console.print(text, highlight=False, markup=False)


def fit(
    model: nn.Module,
    params: list[nn.Parameter],
    cfg: Any,
    steps_per_epoch: int,
    batches: Callable[[torch.Generator], Iterable[Any]],
    step_loss: Callable[[Any, float], tuple[torch.Tensor, dict[str, float], int]],
    validate: Callable[[], dict[str, float]],
    *,
    gen: torch.Generator,
    score: str = "val_accuracy",
    train_modules: list[nn.Module] | None = None,
    checkpoint: Path | None = None,
    write_checkpoint: bool = True,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    load_extra_state: Callable[[dict[str, Any]], None] | None = None,
    after_backward: Callable[[], None] | None = None,
    progress: Any = None,
    description: str = "train",
    epoch_start: Callable[[int], None] | None = None,
) -> TrainResult:
    """The epoch loop every trainer in edgekd runs: AdamW over `params` with a cosine schedule after
    a linear warm-up, gradient clipping, a non-finite loss stops with a StageError, the best epoch
    on `validate()[score]` is kept, optional early stopping (`cfg.patience`), and a checkpoint after
    every epoch (model, optimizer, schedule, `gen` and torch RNG states, history, best state, and
    the caller's `extra_state()`) that a killed run resumes from exactly.

    The caller owns the data: `batches(gen)` yields one epoch's batches (drawing any shuffling or
    augmentation from `gen`), `step_loss(batch, progress)` returns (loss, logged parts, batch size),
    with progress in [0, 1] for schedules. `cfg` supplies lr, weight_decay, epochs, grad_clip and
    optionally patience.
    """
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    warm = min(steps_per_epoch, max(1, total // 20))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start_epoch, history = 0, []
    best_acc, best_epoch, best_state, bad_epochs = -1.0, -1, None, 0
    if checkpoint is not None and checkpoint.is_file():
        ck = load_checkpoint(checkpoint)
        model.load_state_dict(ck["model"])
        if load_extra_state is not None:
            load_extra_state(ck)
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        best_acc, best_epoch, best_state, bad_epochs = ck["best_acc"], ck["best_epoch"], ck["best_state"], ck["bad_epochs"]

    t0 = time.perf_counter()
    task = progress.add_task(description, total=(cfg.epochs - start_epoch) * steps_per_epoch) if progress else None
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        for m in train_modules or [model]:
            m.train()
        sums: dict[str, float] = {}
        n_seen, e0 = 0, time.perf_counter()
        if epoch_start is not None:  # e.g. switch to this epoch's cached augmented view (also after a resume)
            epoch_start(epoch)
        for step, batch in enumerate(batches(gen)):
            loss, parts, n = step_loss(batch, (epoch + step / steps_per_epoch) / cfg.epochs)
            if not torch.isfinite(loss):
                raise StageError(f"{description}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}",
                                 hint="lower the learning rate, or check the data and teacher for NaN/inf")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
            n_seen += n
            if progress is not None:
                shown = " ".join(f"{k}={v / max(n_seen, 1):.3f}" for k, v in sums.items())
                progress.update(task, advance=1, description=f"{description} {epoch + 1}/{cfg.epochs} {shown}")
        val = validate()
        rec = {"epoch": epoch + 1, score: val[score], "lr": sched.get_last_lr()[0],
               "seconds": time.perf_counter() - e0, **{f"loss_{k}": v / max(n_seen, 1) for k, v in sums.items()},
               **{k: v for k, v in val.items() if k != score}}
        history.append(rec)
        losses = " ".join(f"{k}={v / max(n_seen, 1):.4f}" for k, v in sums.items())
        epoch_line(progress, f"  {description} epoch {epoch + 1}/{cfg.epochs}: {score}={val[score]:.4f} {losses}"
                             f" ({rec['seconds']:.1f} s)")
        if val[score] > best_acc:
            best_acc, best_epoch, bad_epochs = val[score], epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        patience = getattr(cfg, "patience", None)
        stop = patience is not None and bad_epochs >= patience
        if checkpoint is not None and write_checkpoint:
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": history,
                "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state, "bad_epochs": bad_epochs,
                **(extra_state() if extra_state is not None else {}),
            })
        if stop:
            stopped_early = True
            break
    if progress is not None and task is not None:
        progress.remove_task(task)
    if best_state is None:
        raise StageError(f"{description}: no epoch ran", hint="distill.epochs must be at least 1")
    return TrainResult(best_state=best_state, best_val_accuracy=best_acc, best_epoch=best_epoch, history=history,
                       stopped_early=stopped_early, seconds=time.perf_counter() - t0)


def train(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: Any,
    *,
    teacher: nn.Module | None = None,
    loss_set: nn.Module | None = None,
    teacher_logits: Callable[[np.ndarray], torch.Tensor] | None = None,
    weighting: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    labeled: np.ndarray | None = None,
    checkpoint: Path | None = None,
    progress: Any = None,
    description: str = "train",
    amp: str = "none",
    rank: int = 0,
    world_size: int = 1,
    aux_tasks: list[Any] | None = None,
    epoch_inputs: Callable[[int], tuple[torch.Tensor, Callable[[np.ndarray], torch.Tensor] | None]] | None = None,
) -> TrainResult:
    """Train a classifier on arrays; with `loss_set` distill from `teacher` (online) or
    `teacher_logits` (cached). The loop itself is `fit`.

    `cfg` is a TrainConfig/DistillConfig. `labeled` masks which train labels may be used (-1 for
    the others). `checkpoint`: a file updated after every epoch; if present at start, resume.
    `teacher_logits(indices)` returns cached teacher logits for train sample indices (offline KD).
    `epoch_inputs(epoch)` -> (inputs, teacher_logits or None): that epoch's already-augmented copy of
    `x_train` (row i is sample i) and, for KD, the cached logits of exactly those inputs; it replaces
    `x_train`, `teacher_logits` and the trainer's own augmentation (consistent teaching from a cache).
    """
    if len(x_train) == 0:
        raise StageError(f"{description}: the training set is empty", hint="check data.train_size and the dataset")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.as_tensor(x_train)
    yt = torch.as_tensor(y_train).long()
    if labeled is not None:
        yt = torch.where(torch.as_tensor(labeled), yt, torch.full_like(yt, -1))
    aux_tasks = aux_tasks or []
    if aux_tasks and world_size > 1:
        from edgekd.errors import ConfigError

        raise ConfigError("multi-task distillation (distill.tasks) runs in one process",
                          hint="run it without torchrun, or drop distill.tasks")
    params = (list(model.parameters()) + (list(loss_set.parameters()) if loss_set is not None else [])
              + [p for t in aux_tasks for p in t.head.parameters()])
    # Each rank takes an equal share of every epoch's permutation (same permutation on all ranks).
    per_rank = len(xt) // world_size if world_size > 1 else len(xt)
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, ignore_index=-1)

    def extra_state() -> dict[str, Any]:
        return {"loss_set": loss_set.state_dict() if loss_set is not None else None,
                "aux_heads": [t.head.state_dict() for t in aux_tasks]}

    def load_extra_state(ck: dict[str, Any]) -> None:
        if loss_set is not None and ck.get("loss_set") is not None:
            loss_set.load_state_dict(ck["loss_set"])
        for t, state in zip(aux_tasks, ck.get("aux_heads") or []):
            t.head.load_state_dict(state)

    ddp_model: nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model)
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else None)

    current: dict[str, Any] = {"x": xt, "t": teacher_logits}

    def epoch_start(epoch: int) -> None:
        if epoch_inputs is not None:  # this epoch's augmented view and the teacher's logits of it
            current["x"], current["t"] = epoch_inputs(epoch)

    def batches(g: torch.Generator):
        perm = torch.randperm(len(xt), generator=g)
        if world_size > 1:
            perm = perm[: per_rank * world_size][rank::world_size]
        aux_perms = [torch.randperm(len(t.x), generator=g) for t in aux_tasks]
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if idx.numel():
                yield step, idx, aux_perms

    def step_loss(batch: Any, prog: float) -> tuple[torch.Tensor, dict[str, float], int]:
        step, idx, aux_perms = batch
        xb, yb = current["x"][idx], yt[idx]
        if cfg.augment and epoch_inputs is None:
            xb = augment_images(xb, gen)
        with autocast if autocast is not None else _null():
            if loss_set is None:
                out = ddp_model(xb)
                loss = ce(out.float(), yb) if (yb >= 0).any() else out.sum() * 0
                parts = {"ce": loss.item()}
            else:
                loss, parts = _distill_step(ddp_model, teacher, loss_set, xb, yb, idx, current["t"],
                                            weighting, progress=prog)
        for t, tperm in zip(aux_tasks, aux_perms):
            # Each auxiliary task cycles through its own data, one batch per main step.
            lo = (step * cfg.batch_size) % max(1, len(tperm))
            tidx = tperm[lo:lo + cfg.batch_size]
            txb = torch.as_tensor(t.x)[tidx]
            if cfg.augment:
                txb = augment_images(txb, gen)
            tl = _aux_loss(t, ddp_model, txb, torch.as_tensor(t.y)[tidx])
            loss = loss + tl
            parts = {**parts, f"task_{t.name}": tl.item()}
        return loss, parts, len(idx)

    def validate() -> dict[str, float]:
        val = {"val_accuracy": accuracy(model, x_val, y_val)}
        for t in aux_tasks:
            val[f"val_accuracy_{t.name}"] = _aux_accuracy(t, model, t.x_val, t.y_val)
        return val

    return fit(model, params, cfg, steps_per_epoch, batches, step_loss, validate, gen=gen,
               train_modules=[model] + ([loss_set] if loss_set is not None else []), checkpoint=checkpoint,
               write_checkpoint=rank == 0, extra_state=extra_state, load_extra_state=load_extra_state,
               after_backward=(lambda: _allreduce_grads(loss_set, world_size))  # projectors live outside DDP
               if world_size > 1 and loss_set is not None else None,
               progress=progress, description=description, epoch_start=epoch_start)


def _aux_loss(task: Any, student: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    from edgekd.distill.multitask import aux_loss

    return aux_loss(task, student, xb, yb)


def _aux_accuracy(task: Any, model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from edgekd.distill.multitask import aux_accuracy

    return aux_accuracy(task, model, x, y)


def _allreduce_grads(module: nn.Module, world_size: int) -> None:
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def _distill_step(student, teacher, loss_set, xb, yb, idx, teacher_logits, weighting, progress: float):
    from edgekd.distill.hooks import FeatureCapture
    from edgekd.distill.losses import LossContext

    raw_student = student.module if hasattr(student, "module") else student
    t_feats: dict[str, torch.Tensor] = {}
    if not getattr(loss_set, "needs_teacher", True):
        # Labels-only (e.g. the hard_label control run): the teacher is never consulted.
        with FeatureCapture(raw_student, sorted(loss_set.student_paths)) as scap:
            s_logits = student(xb)
        ctx = LossContext(student_logits=s_logits.float(), teacher_logits=None, labels=yb,
                          student_features=dict(scap.features), teacher_features={}, progress=progress)
        return loss_set(ctx)
    if teacher_logits is not None and not loss_set.needs_online_teacher:
        t_logits = teacher_logits(idx.numpy())
    else:
        with torch.no_grad(), FeatureCapture(teacher, sorted(loss_set.teacher_paths), detach=True) as tcap:
            t_logits = teacher(xb)
        t_feats = dict(tcap.features)
    if not torch.isfinite(t_logits).all():
        bad = int((~torch.isfinite(t_logits)).any(1).nonzero()[0])
        raise StageError(f"teacher logits contain NaN/inf (train sample {int(idx[bad])})",
                         hint="the teacher is broken: retrain it or check its weights")
    with FeatureCapture(raw_student, sorted(loss_set.student_paths)) as scap:
        s_logits = student(xb)
    sw = weighting(t_logits, yb) if weighting is not None else None
    ctx = LossContext(student_logits=s_logits.float(), teacher_logits=t_logits.float(), labels=yb,
                      student_features=dict(scap.features), teacher_features=t_feats, sample_weight=sw,
                      progress=progress)
    return loss_set(ctx)
