"""The classification task's distill stage: the student learns from the teacher (logit, feature, relation
losses; offline through the teacher-logit cache or online), born-again generations, auxiliary tasks, and the
labels-only control trained beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageOutput, StageResult, stable_hash
from edgekd.tasks.classification.student import student_ref
from edgekd.tasks.classification.teacher import _ref_key, task_splits
from edgekd.tasks.common import build_model, checkpoint_path, data_fingerprint, load_model, splits


# --------------------------------------------------------------------------- distill

def _distill_cfg(ctx: BuildContext) -> dict:
    from edgekd.distill.options import parse_loss, parse_weighting

    # each loss term's and the weighting's kind and options typed before the teacher trains (torch-free)
    for lo in ctx.recipe.distill.losses:
        parse_loss(lo)
    if ctx.recipe.distill.weighting is not None:
        parse_weighting(ctx.recipe.distill.weighting)
    _check_onnx_teachers(ctx.recipe.distill, ctx.recipe.teacher)  # pre-flight: exit 2 before the teacher runs
    return {"student": _ref_key(ctx.recipe.student), "distill": ctx.recipe.distill.model_dump(),
            "data": ctx.recipe.data.key_dict(), "data_sha256": data_fingerprint(ctx)}


def _teacher_module(ctx: BuildContext, teacher_res: StageResult):
    """The teacher as one module: a single model, or a weighted ensemble of several teachers."""
    from edgekd.distill.ensemble import WeightedEnsemble

    main = load_model(ctx.recipe.teacher, teacher_res.path("model"), log=ctx.log)
    extras = ctx.recipe.distill.extra_teachers
    if not extras:
        return main
    members = [main] + [load_model(ref, teacher_res.path(f"extra_{i}"), log=ctx.log) for i, ref in enumerate(extras, start=1)]
    return WeightedEnsemble(members, ctx.recipe.distill.teacher_weights).eval()


def _logit_cache(ctx: BuildContext, teacher, teacher_res: StageResult, x_train: np.ndarray, rank: int, world: int):
    """Offline KD: write (once, sharded by rank) and open the teacher-logit cache."""
    from edgekd import dist as ddp
    from edgekd.distill.cache import TeacherLogitCache

    dc = ctx.recipe.distill
    thash = stable_hash(teacher_res.sha256)
    cache = TeacherLogitCache(ctx.cache_dir / "logits", teacher_hash=thash, data_hash=data_fingerprint(ctx),
                              augment_seed=None, top_k=dc.teacher_cache.top_k)
    if not cache.exists():
        cache.write(teacher, x_train, rank=rank, world_size=world)
        ddp.barrier()
        if rank == 0:
            cache.open()
        ddp.barrier()
    return cache.open()


def _view_caches(ctx: BuildContext, teacher, teacher_res: StageResult, x_train: np.ndarray, rank: int, world: int):
    """Consistent teaching: the teacher's logits of distill.teacher_cache.views augmented copies of the
    training set, each written once into the shared logit cache (keyed by augmentation seed)."""
    from edgekd import dist as ddp
    from edgekd.distill.cache import AugmentedViews, TeacherLogitCache
    from edgekd.distill.trainer import augment_images

    dc = ctx.recipe.distill
    thash = stable_hash(teacher_res.sha256)
    caches = []
    for v in range(dc.teacher_cache.views):
        c = TeacherLogitCache(ctx.cache_dir / "logits", teacher_hash=thash, data_hash=data_fingerprint(ctx),
                              augment_seed=v, top_k=dc.teacher_cache.top_k)
        if not c.exists():
            ctx.log(f"  caching the teacher's logits of augmented view {v + 1}/{dc.teacher_cache.views}")
            c.write(teacher, x_train, rank=rank, world_size=world, augment=augment_images)
            ddp.barrier()
            if rank == 0:
                c.open()
            ddp.barrier()
        caches.append(c.open())
    return AugmentedViews(x_train, augment_images, dc.teacher_cache.views, caches)


def _onnx_test_accuracy(model, s, wd: Path, name: str) -> float:
    """Test accuracy of `model` exported to fp32 ONNX and run in onnxruntime (CPU): the way the report
    measures the student/fp32 candidate, so the KD student and its control are compared alike."""
    import torch

    from edgekd.config import OnnxConfig
    from edgekd.export.onnx import export_onnx
    from edgekd.runtimes.ort import accuracy as ort_accuracy

    text = np.issubdtype(s.x_val.dtype, np.integer) and s.x_val.ndim == 2
    path = export_onnx(model, torch.as_tensor(s.x_val[:1]), wd / f".{name}-eval.onnx", OnnxConfig().opset, True,
                       dynamic_sequence=bool(text))
    try:
        return ort_accuracy(path, s.x_test, s.y_test)
    finally:
        path.unlink(missing_ok=True)


def _train_control(ctx: BuildContext, dc, s, teacher, kd_student, key_material: dict, wd: Path, rank: int,
                   world: int, with_views: bool, ref: Any = None) -> dict:
    """The labels-only control (edgekd.distill.control): the KD student's architecture, seed and init,
    the same epochs, batches and (augmented) inputs, hard labels only. Saved as control.pt."""
    import torch

    from edgekd.distill.cache import AugmentedViews
    from edgekd.distill.control import control_metrics, train_control
    from edgekd.distill.trainer import accuracy, augment_images
    from edgekd.zoo.text import adopt_trained_teacher

    control = build_model(ref or ctx.recipe.student, seed=dc.seed)
    init = adopt_trained_teacher(control, teacher, torch.as_tensor(s.x_train[:512]))  # the same cut as the KD student
    ckpt = checkpoint_path(ctx, "distill-control", key_material)
    views = AugmentedViews(s.x_train, augment_images, dc.teacher_cache.views) if with_views else None
    res = train_control(control, s.x_train, s.y_train, s.x_val, s.y_val, dc, labeled=s.labeled,
                        checkpoint=ckpt if world == 1 else None, progress=ctx.progress, rank=rank, world_size=world,
                        epoch_inputs=views)
    control.load_state_dict(res.best_state)
    torch.save(control.state_dict(), wd / "control.pt")
    ckpt.unlink(missing_ok=True)
    measured = f"fp32 ONNX in onnxruntime (CPU), test split of {len(s.x_test)} samples"
    m = control_metrics(res, dc, accuracy=_onnx_test_accuracy(control, s, wd, "control"),
                        accuracy_torch=accuracy(control, s.x_test, s.y_test),
                        kd_accuracy=_onnx_test_accuracy(kd_student, s, wd, "student"), measured_with=measured,
                        student_init=init)
    ctx.log(f"  labels-only control: {100 * m['accuracy']:.2f}% test, KD student {100 * m['kd_accuracy']:.2f}% "
            f"({m['kd_gain_points']:+.2f} points)")
    return m


def _check_onnx_teachers(dc, teacher) -> list[str]:
    """An ONNX teacher gives logits, not activations or gradients: logit losses through the cache only. Checked at
    pre-flight (exit 2 before the teacher stage runs); returns the ONNX teachers' descriptions."""
    from edgekd.distill.options import LOGIT_LOSSES

    onnx_teachers = [r.describe() for r in (teacher, *dc.extra_teachers) if r.onnx]
    if not onnx_teachers:
        return []
    other = [lc.kind for lc in dc.losses if lc.kind not in LOGIT_LOSSES]
    if other:
        raise ConfigError(f"distill loss '{other[0]}' needs the teacher's activations, but the teacher "
                          f"({onnx_teachers[0]}) is an ONNX file that gives logits only",
                          hint=f"keep only {' / '.join(LOGIT_LOSSES)} losses, or bring the teacher as a torch model (factory + weights)")
    if dc.augment:
        raise ConfigError("an ONNX teacher's logits are computed once into the teacher-logit cache, on the "
                          "un-augmented inputs, but distill.augment is on", hint="set distill.augment=false")
    if dc.tasks or dc.born_again_generations:
        raise ConfigError("multi-task and born-again distillation need a torch teacher, not an ONNX file",
                          hint="drop distill.tasks / born_again_generations, or bring the teacher as a torch model")
    return onnx_teachers


def _new_student(ctx: BuildContext, teacher, s, ref: Any = None):
    """The student before training, checked against the data and the teacher: (model, its init record)."""
    import torch

    from edgekd.zoo.sources import check_model_on_data
    from edgekd.zoo.text import adopt_trained_teacher

    ref = ref or ctx.recipe.student
    student = build_model(ref, seed=ctx.recipe.distill.seed, log=ctx.log)
    check_model_on_data(student, s.x_val, s.num_classes, "student", ref.describe())
    # None unless the student asks for init_from: trained_teacher (a narrower one is pruned on training samples)
    init = adopt_trained_teacher(student, teacher, torch.as_tensor(s.x_train[:512]))
    with torch.no_grad():
        t_out = teacher(torch.as_tensor(s.x_val[:2]))
        s_out = student(torch.as_tensor(s.x_val[:2]))
    if t_out.shape[-1] != s_out.shape[-1]:
        raise ConfigError(f"teacher outputs {t_out.shape[-1]} classes, student {s_out.shape[-1]}",
                          hint="set the student's num_classes to the teacher's")
    return student, init


def _offline_teacher(ctx: BuildContext, teacher, inputs: dict[str, StageResult], s, loss_set, offline: bool,
                     rank: int, world: int):
    """(cached logits lookup, augmented views) when the teacher is read from the logit cache; (None, None) online."""
    from edgekd.distill.options import LOGIT_LOSSES

    dc = ctx.recipe.distill
    if not offline:
        return None, None
    if loss_set.needs_online_teacher:
        raise ConfigError("distill.teacher_cache holds teacher logits only, but a feature/attention/hidden_state/"
                          "relation loss needs the teacher's activations",
                          hint=f"set distill.teacher_cache.enabled=false, or keep only {'/'.join(LOGIT_LOSSES)} losses")
    if dc.augment:  # with teacher_cache.views (the card refuses augmentation with an un-augmented cache)
        return None, _view_caches(ctx, teacher, inputs["teacher"], s.x_train, rank, world)
    return _logit_cache(ctx, teacher, inputs["teacher"], s.x_train, rank, world).get, None


def _generations(ctx: BuildContext, s, student, teacher, loss_set, teacher_logits, views, aux, key_material: dict,
                 example, rank: int, world: int, ref: Any = None) -> tuple[list[dict], Any]:
    """Train the student, then each born-again generation (the previous one is its teacher): their records, and
    the student with the best validation accuracy's state loaded."""
    import copy

    from edgekd.distill.losses import build_losses
    from edgekd.distill.trainer import accuracy, train
    from edgekd.distill.weighting import build_weighting

    dc = ctx.recipe.distill
    weighting = build_weighting(dc.weighting)
    generations = []
    for gen in range(dc.born_again_generations + 1):
        ckpt = checkpoint_path(ctx, f"distill-g{gen}", key_material)
        res = train(student, s.x_train, s.y_train, s.x_val, s.y_val, dc, teacher=teacher, loss_set=loss_set,
                    teacher_logits=teacher_logits, weighting=weighting, labeled=s.labeled,
                    checkpoint=ckpt if world == 1 else None, progress=ctx.progress,
                    description="distill" if gen == 0 else f"born-again g{gen + 1}", amp=dc.amp,
                    rank=rank, world_size=world, aux_tasks=aux if gen == 0 else None,
                    epoch_inputs=views if gen == 0 else None)
        student.load_state_dict(res.best_state)
        generations.append({"generation": gen + 1, "val_accuracy": res.best_val_accuracy,
                            "test_accuracy": accuracy(student, s.x_test, s.y_test), "train_seconds": res.seconds,
                            "best_epoch": res.best_epoch, "history": res.history, "state": res.best_state})
        ckpt.unlink(missing_ok=True)
        if gen < dc.born_again_generations:
            # Born-again: this generation becomes the next one's teacher (same architecture).
            teacher = copy.deepcopy(student).eval()
            student = build_model(ref or ctx.recipe.student, seed=dc.seed + gen + 1)
            loss_set = build_losses(dc.losses, student, teacher, example)
            teacher_logits, views = None, None  # the cache belongs to the original teacher
    best = max(generations, key=lambda g: g["val_accuracy"])  # chosen on validation
    student.load_state_dict(best["state"])
    return generations, student


def _aux_heads(ctx: BuildContext, aux, student, wd: Path) -> dict[str, Any]:
    """Save the auxiliary tasks' heads; their test accuracy (reported only)."""
    import torch

    from edgekd.distill.multitask import aux_accuracy

    torch.save({t.name: t.head.state_dict() for t in aux}, wd / "task_heads.pt")
    out = {}
    for t in aux:
        ts = task_splits(ctx, next(c for c in ctx.recipe.distill.tasks if c.name == t.name))
        out[t.name] = {"test_accuracy": aux_accuracy(t, student, ts.x_test, ts.y_test), "weight": t.weight,
                       "head_from": t.head_from}
    return out


def stage_distill(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import torch

    from edgekd import dist as ddp
    from edgekd.distill.losses import build_losses
    from edgekd.distill.multitask import build_aux_task
    from edgekd.zoo import count_params

    s = splits(ctx)
    dc = ctx.recipe.distill
    onnx_teachers = _check_onnx_teachers(dc, ctx.recipe.teacher)
    rank, world = ddp.init("cpu")
    teacher = _teacher_module(ctx, inputs["teacher"])
    ref = student_ref(ctx, inputs)  # the search winner's architecture when a budget sized the student
    student, init = _new_student(ctx, teacher, s, ref)
    example = torch.as_tensor(s.x_val[:8])
    loss_set = build_losses(dc.losses, student, teacher, example)
    cached_logits, views = _offline_teacher(ctx, teacher, inputs, s, loss_set,
                                            dc.teacher_cache.enabled or bool(onnx_teachers), rank, world)
    aux = [build_aux_task(t, student, load_model(t.teacher, inputs["teacher"].path(f"task_{t.name}")),
                          task_splits(ctx, t)) for t in dc.tasks]
    key_material = _distill_cfg(ctx) | {"teacher": inputs["teacher"].key}
    generations, student = _generations(ctx, s, student, teacher, loss_set, cached_logits, views, aux, key_material,
                                        example, rank, world, ref)
    best = max(generations, key=lambda g: g["val_accuracy"])
    torch.save(student.state_dict(), wd / "student.pt")
    outputs = {"model": "student.pt"}
    task_metrics = _aux_heads(ctx, aux, student, wd) if aux else {}
    if aux:
        outputs["task_heads"] = "task_heads.pt"
    control = None
    if dc.control:  # the control copies generation 1's set-up: the original teacher, its views
        control = _train_control(ctx, dc, s, teacher, student, key_material, wd, rank, world, views is not None, ref)
        outputs["control"] = "control.pt"
    ddp.barrier()
    metrics = {"params": count_params(student), "val_accuracy": best["val_accuracy"], "best_epoch": best["best_epoch"],
               "test_accuracy": best["test_accuracy"], "generation": best["generation"],
               "train_seconds": sum(g["train_seconds"] for g in generations),
               "history": generations[0]["history"], "world_size": world,
               "generations": [{k: v for k, v in g.items() if k != "state"} for g in generations],
               "teacher_cache": dc.teacher_cache.enabled, "losses": [lc.model_dump() for lc in dc.losses],
               "student_init": init,
               # data.unlabeled: train samples learned from the teacher's soft labels alone
               "unlabeled_samples": int(s.n_unlabeled),
               "labeled_samples": int(s.labeled.sum() if s.labeled is not None else (s.y_train >= 0).sum()),
               "tasks": task_metrics, "control": control}
    if "search" in inputs:  # the architecture trained: export/quantize/convert rebuild it to load student.pt
        metrics["student_kwargs"] = ref.kwargs
    return StageOutput(outputs, metrics)
