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
    state_io: Any = None,
) -> TrainResult:
    """The epoch loop every trainer in edgekd runs: AdamW over `params` with a cosine schedule after
    a linear warm-up, gradient clipping, a non-finite loss stops with a StageError, the best epoch
    on `validate()[score]` is kept, optional early stopping (`cfg.patience`), and a checkpoint after
    every epoch (model, optimizer, schedule, `gen` and torch RNG states, history, best state, and
    the caller's `extra_state()`) that a killed run resumes from exactly.

    The caller owns the data: `batches(gen)` yields one epoch's batches (drawing any shuffling or
    augmentation from `gen`), `step_loss(batch, progress)` returns (loss, logged parts, batch size),
    with progress in [0, 1] for schedules. `cfg` supplies lr, weight_decay, epochs, grad_clip and
    optionally patience. `state_io`: how the model's and optimizer's state are read and restored (best
    epoch, checkpoints); default their own state_dict; a sharded model (FSDP) gives full-state-dict I/O
    (llm.parallel.FullState), a collective that every rank runs, while only `write_checkpoint` ranks write.
    """
    loop = _EpochLoop(model, params, cfg, steps_per_epoch, batches, step_loss, validate, gen=gen, score=score,
                      train_modules=train_modules or [model], checkpoint=checkpoint, write_checkpoint=write_checkpoint,
                      extra_state=extra_state, after_backward=after_backward, progress=progress,
                      description=description, epoch_start=epoch_start, state_io=state_io or PlainState(model))
    if checkpoint is not None and checkpoint.is_file():
        loop.resume(load_checkpoint(checkpoint), load_extra_state)
    return loop.run()


def _optimizer_and_schedule(params: list[nn.Parameter], cfg: Any, steps_per_epoch: int
                            ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` and its lr multiplier: linear warm-up over the first 5% of all steps (at
    most one epoch, at least one step), then a cosine decay to zero at the last step."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    warm = min(steps_per_epoch, max(1, total // 20))

    # A plain function, not a callable object: LambdaLR.state_dict would otherwise store the object's
    # __dict__ in every checkpoint.
    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


class PlainState:
    """`fit`'s state I/O for a model in one piece: its own state_dict (cloned) and the optimizer's."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_model_state(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(sd)

    def opt_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        return opt.state_dict()

    def load_opt_state(self, opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
        opt.load_state_dict(sd)


@dataclass
class _EpochLoop:
    """`fit`'s state across epochs: the caller's callbacks, the optimizer and schedule, and what a
    checkpoint carries (history, best epoch and weights, epochs without improvement)."""

    model: nn.Module
    params: list[nn.Parameter]
    cfg: Any
    steps_per_epoch: int
    batches: Callable[[torch.Generator], Iterable[Any]]
    step_loss: Callable[[Any, float], tuple[torch.Tensor, dict[str, float], int]]
    validate: Callable[[], dict[str, float]]
    gen: torch.Generator
    score: str
    train_modules: list[nn.Module]
    checkpoint: Path | None
    write_checkpoint: bool
    extra_state: Callable[[], dict[str, Any]] | None
    after_backward: Callable[[], None] | None
    progress: Any
    description: str
    epoch_start: Callable[[int], None] | None
    state_io: Any = None
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        self.opt, self.sched = _optimizer_and_schedule(self.params, self.cfg, self.steps_per_epoch)

    def resume(self, ck: dict[str, Any], load_extra_state: Callable[[dict[str, Any]], None] | None) -> None:
        """Restore a checkpoint written by `save`, so the next epoch runs exactly as it would have."""
        self.state_io.load_model_state(ck["model"])
        if load_extra_state is not None:
            load_extra_state(ck)
        self.state_io.load_opt_state(self.opt, ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        self.start_epoch, self.history = ck["epoch"] + 1, ck["history"]
        self.best_acc, self.best_epoch = ck["best_acc"], ck["best_epoch"]
        self.best_state, self.bad_epochs = ck["best_state"], ck["bad_epochs"]

    def run(self) -> TrainResult:
        """The remaining epochs, stopping early on patience; the best epoch's weights and the history."""
        cfg, progress, description = self.cfg, self.progress, self.description
        t0 = time.perf_counter()
        task = progress.add_task(description, total=(cfg.epochs - self.start_epoch) * self.steps_per_epoch) if progress else None
        stopped_early = False
        for epoch in range(self.start_epoch, cfg.epochs):
            e0 = time.perf_counter()
            sums, n_seen = self.train_epoch(epoch, task)
            stop = self.end_epoch(epoch, sums, n_seen, e0)
            if self.checkpoint is not None:
                self.save(epoch)
            if stop:
                stopped_early = True
                break
        if progress is not None and task is not None:
            progress.remove_task(task)
        if self.best_state is None:
            raise StageError(f"{description}: no epoch ran", hint="distill.epochs must be at least 1")
        return TrainResult(best_state=self.best_state, best_val_accuracy=self.best_acc, best_epoch=self.best_epoch,
                           history=self.history, stopped_early=stopped_early, seconds=time.perf_counter() - t0)

    def train_epoch(self, epoch: int, task: Any) -> tuple[dict[str, float], int]:
        """One pass over `batches(gen)`; returns the sample-weighted sums of the logged loss parts and
        the number of samples seen."""
        cfg, progress, description = self.cfg, self.progress, self.description
        for m in self.train_modules:
            m.train()
        sums: dict[str, float] = {}
        n_seen = 0
        if self.epoch_start is not None:  # e.g. switch to this epoch's cached augmented view (also after a resume)
            self.epoch_start(epoch)
        for step, batch in enumerate(self.batches(self.gen)):
            loss, parts, n = self.step_loss(batch, (epoch + step / self.steps_per_epoch) / cfg.epochs)
            if not torch.isfinite(loss):
                raise StageError(f"{description}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}",
                                 hint="lower the learning rate, or check the data and teacher for NaN/inf")
            self.optimizer_step(loss)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
            n_seen += n
            if progress is not None:
                shown = " ".join(f"{k}={v / max(n_seen, 1):.3f}" for k, v in sums.items())
                progress.update(task, advance=1, description=f"{description} {epoch + 1}/{cfg.epochs} {shown}")
        return sums, n_seen

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, the caller's gradient hook (DDP's all-reduce of modules outside DDP), clipping,
        then one optimizer and one schedule step."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()

    def end_epoch(self, epoch: int, sums: dict[str, float], n_seen: int, e0: float) -> bool:
        """Validate, append the epoch's history record, log it, keep the weights if they are the best
        so far; True when early stopping's patience has run out."""
        cfg, score, description = self.cfg, self.score, self.description
        val = self.validate()
        rec = {"epoch": epoch + 1, score: val[score], "lr": self.sched.get_last_lr()[0],
               "seconds": time.perf_counter() - e0, **{f"loss_{k}": v / max(n_seen, 1) for k, v in sums.items()},
               **{k: v for k, v in val.items() if k != score}}
        self.history.append(rec)
        losses = " ".join(f"{k}={v / max(n_seen, 1):.4f}" for k, v in sums.items())
        epoch_line(self.progress, f"  {description} epoch {epoch + 1}/{cfg.epochs}: {score}={val[score]:.4f} {losses}"
                                  f" ({rec['seconds']:.1f} s)")
        if val[score] > self.best_acc:
            self.best_acc, self.best_epoch, self.bad_epochs = val[score], epoch + 1, 0
            self.best_state = self.state_io.model_state()
        else:
            self.bad_epochs += 1
        patience = getattr(cfg, "patience", None)
        return patience is not None and self.bad_epochs >= patience

    def save(self, epoch: int) -> None:
        """Write the resume checkpoint after `epoch` (the format `resume` reads). The state is read on every
        rank (a sharded model's is gathered), written where `write_checkpoint`."""
        model, opt = self.state_io.model_state(), self.state_io.opt_state(self.opt)
        if not self.write_checkpoint:
            return
        save_checkpoint(self.checkpoint, {
            "model": model, "opt": opt, "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": self.history,
            "best_acc": self.best_acc, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "bad_epochs": self.bad_epochs, **(self.extra_state() if self.extra_state is not None else {}),
        })


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
    xt, yt = torch.as_tensor(x_train), _masked_labels(y_train, labeled)
    aux_tasks = aux_tasks or []
    if aux_tasks and world_size > 1:
        from edgekd.errors import ConfigError

        raise ConfigError("multi-task distillation (distill.tasks) runs in one process",
                          hint="run it without torchrun, or drop distill.tasks")
    params = (list(model.parameters()) + (list(loss_set.parameters()) if loss_set is not None else [])
              + [p for t in aux_tasks for p in t.head.parameters()])
    # Each rank takes an equal share of every epoch's permutation (same permutation on all ranks).
    per_rank = len(xt) // world_size if world_size > 1 else len(xt)
    s = _ArraySteps(model, _ddp_wrapped(model, world_size), xt, yt, x_val, y_val, cfg, gen,
                    max(1, math.ceil(per_rank / cfg.batch_size)), per_rank, rank, world_size,
                    teacher=_frozen(teacher), loss_set=loss_set, weighting=weighting, aux_tasks=aux_tasks,
                    epoch_inputs=epoch_inputs, amp=amp, current={"x": xt, "t": teacher_logits})
    return fit(model, params, cfg, s.steps_per_epoch, s.batches, s.step_loss, s.validate, gen=gen,
               train_modules=[model] + ([loss_set] if loss_set is not None else []), checkpoint=checkpoint,
               write_checkpoint=rank == 0, extra_state=s.extra_state, load_extra_state=s.load_extra_state,
               after_backward=(lambda: allreduce_grads(loss_set, world_size))  # projectors live outside DDP
               if world_size > 1 and loss_set is not None else None,
               progress=progress, description=description, epoch_start=s.epoch_start)


def _masked_labels(y_train: np.ndarray, labeled: np.ndarray | None) -> torch.Tensor:
    """Train labels as int64, with -1 (CE's ignore_index) where `labeled` hides them."""
    yt = torch.as_tensor(y_train).long()
    if labeled is not None:
        yt = torch.where(torch.as_tensor(labeled), yt, torch.full_like(yt, -1))
    return yt


def _ddp_wrapped(model: nn.Module, world_size: int) -> nn.Module:
    """The module the steps run: `model` itself, or DistributedDataParallel around it under torchrun."""
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def _frozen(teacher: nn.Module | None) -> nn.Module | None:
    """The teacher in eval mode without gradients: it teaches, it never learns."""
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    return teacher


@dataclass
class _ArraySteps:
    """What `train` hands `fit` for a classifier on arrays: this rank's batches of an epoch's
    permutation, the loss of one batch (labels, or KD through the LossSet, plus auxiliary tasks),
    validation, and the loss set's and task heads' part of the checkpoint."""

    model: nn.Module
    ddp_model: nn.Module
    xt: torch.Tensor
    yt: torch.Tensor
    x_val: np.ndarray
    y_val: np.ndarray
    cfg: Any
    gen: torch.Generator
    steps_per_epoch: int
    per_rank: int
    rank: int
    world_size: int
    teacher: nn.Module | None
    loss_set: nn.Module | None
    weighting: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    aux_tasks: list[Any]
    epoch_inputs: Callable[[int], tuple[torch.Tensor, Callable[[np.ndarray], torch.Tensor] | None]] | None
    amp: str
    current: dict[str, Any]  # this epoch's inputs ("x") and cached teacher logits ("t")

    def __post_init__(self) -> None:
        self.ce = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing, ignore_index=-1)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.amp == "bf16" else None

    def extra_state(self) -> dict[str, Any]:
        """The loss set's (projectors) and auxiliary heads' weights, for the checkpoint."""
        return {"loss_set": self.loss_set.state_dict() if self.loss_set is not None else None,
                "aux_heads": [t.head.state_dict() for t in self.aux_tasks]}

    def load_extra_state(self, ck: dict[str, Any]) -> None:
        """Restore what `extra_state` saved."""
        if self.loss_set is not None and ck.get("loss_set") is not None:
            self.loss_set.load_state_dict(ck["loss_set"])
        for t, state in zip(self.aux_tasks, ck.get("aux_heads") or []):
            t.head.load_state_dict(state)

    def epoch_start(self, epoch: int) -> None:
        """Switch to this epoch's augmented view and the teacher's logits of it, when cached."""
        if self.epoch_inputs is not None:
            self.current["x"], self.current["t"] = self.epoch_inputs(epoch)

    def batches(self, g: torch.Generator):
        """(step, sample indices, auxiliary tasks' permutations) for each step of one epoch."""
        perm = torch.randperm(len(self.xt), generator=g)
        if self.world_size > 1:
            perm = perm[: self.per_rank * self.world_size][self.rank::self.world_size]
        aux_perms = [torch.randperm(len(t.x), generator=g) for t in self.aux_tasks]
        bs = self.cfg.batch_size
        for step in range(self.steps_per_epoch):
            idx = perm[step * bs:(step + 1) * bs]
            if idx.numel():
                yield step, idx, aux_perms

    def step_loss(self, batch: Any, prog: float) -> tuple[torch.Tensor, dict[str, float], int]:
        """The main task's loss on one batch plus every auxiliary task's loss on its own batch."""
        step, idx, aux_perms = batch
        xb, yb = self.current["x"][idx], self.yt[idx]
        if self.cfg.augment and self.epoch_inputs is None:
            xb = augment_images(xb, self.gen)
        with self.autocast if self.autocast is not None else _null():
            if self.loss_set is None:
                out = self.ddp_model(xb)
                loss = self.ce(out.float(), yb) if (yb >= 0).any() else out.sum() * 0
                parts = {"ce": loss.item()}
            else:
                loss, parts = _distill_step(self.ddp_model, self.teacher, self.loss_set, xb, yb, idx, self.current["t"],
                                            self.weighting, progress=prog)
        loss, parts = self.aux_step_losses(step, aux_perms, loss, parts)
        return loss, parts, len(idx)

    def aux_step_losses(self, step: int, aux_perms: list[torch.Tensor], loss: torch.Tensor,
                        parts: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """Add each auxiliary task's loss to `loss` and `parts`; each task cycles through its own
        data, one batch per main step."""
        bs = self.cfg.batch_size
        for t, tperm in zip(self.aux_tasks, aux_perms):
            lo = (step * bs) % max(1, len(tperm))
            tidx = tperm[lo:lo + bs]
            txb = torch.as_tensor(t.x)[tidx]
            if self.cfg.augment:
                txb = augment_images(txb, self.gen)
            tl = _aux_loss(t, self.ddp_model, txb, torch.as_tensor(t.y)[tidx])
            loss = loss + tl
            parts = {**parts, f"task_{t.name}": tl.item()}
        return loss, parts

    def validate(self) -> dict[str, float]:
        """Validation accuracy of the main task and of each auxiliary task."""
        val = {"val_accuracy": accuracy(self.model, self.x_val, self.y_val)}
        for t in self.aux_tasks:
            val[f"val_accuracy_{t.name}"] = _aux_accuracy(t, self.model, t.x_val, t.y_val)
        return val


def _aux_loss(task: Any, student: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    from edgekd.distill.multitask import aux_loss

    return aux_loss(task, student, xb, yb)


def _aux_accuracy(task: Any, model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from edgekd.distill.multitask import aux_accuracy

    return aux_accuracy(task, model, x, y)


def allreduce_grads(module: nn.Module, world_size: int) -> None:
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
