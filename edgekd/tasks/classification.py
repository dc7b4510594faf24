"""The classification task: what a classifier's build does its own way.

Its stages teacher → distill → export, and the hooks the shared stages (tasks/stages/: quantize,
profile, select, convert, report) call: how a candidate is judged (top-1 accuracy through
onnxruntime), how its models are timed (batches in fresh processes, interleaved), its conversion
job and its report rows. Each stage function writes only inside its `wd` and returns a StageOutput.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config import SELECTION_FIELDS
from edgekd.errors import ConfigError
from edgekd.fsio import cache_entry, write_json_atomic
from edgekd.pipeline import BuildContext, Stage, StageOutput, StageResult, stable_hash
from edgekd.targets import family
from edgekd.targets.cpu import host_device
from edgekd.tasks.base import Task
from edgekd.tasks.common import build_model, checkpoint_path, data_fingerprint, load_model, splits


# --------------------------------------------------------------------------- teacher


def _ref_key(ref) -> dict:
    """A model's cache-key material: its card settings plus the content hashes of the files it
    comes from (weights, ONNX, HF folder, factory source), so editing them re-runs the stage."""
    from edgekd.zoo.sources import fingerprint

    d = ref.key_dict()
    files = fingerprint(ref)
    if files:
        d["files_sha256"] = files
    return d


def _teacher_refs(ctx: BuildContext) -> list:
    return [ctx.recipe.teacher, *ctx.recipe.distill.extra_teachers, *(t.teacher for t in ctx.recipe.distill.tasks)]


def _teacher_cfg(ctx: BuildContext) -> dict:
    from edgekd.zoo.sources import check_shipped

    for ref in _teacher_refs(ctx):
        if ref.uses_shipped:  # before any work: a missing or altered file is exit 2 in seconds
            ctx.memo(f"shipped:{ref.shipped_file()}:{ref.shipped.sha256}", lambda ref=ref: check_shipped(ref))
    d = ctx.recipe.data.key_dict(exclude={"label_fraction"})
    return {"teacher": _ref_key(ctx.recipe.teacher), "data": d, "data_sha256": data_fingerprint(ctx),
            "extra_teachers": [_ref_key(t) for t in ctx.recipe.distill.extra_teachers],
            "tasks": [{"teacher": _ref_key(t.teacher), "data": t.data.key_dict(), "label_map": t.label_map}
                      for t in ctx.recipe.distill.tasks]}


def task_splits(ctx: BuildContext, task):
    """An auxiliary task's data with its labels mapped (labels are what its teacher learns)."""
    import dataclasses

    from edgekd.data import load
    from edgekd.distill.multitask import relabel

    def make():
        sp = load(task.data)
        if task.label_map is None:
            return sp
        # the task's classes are the mapped labels: its teacher is checked against those, not the source's
        n = max(task.label_map) + 1
        return dataclasses.replace(sp, y_train=relabel(sp.y_train, task.label_map, task.name),
                                   y_val=relabel(sp.y_val, task.label_map, task.name),
                                   y_test=relabel(sp.y_test, task.label_map, task.name), num_classes=n,
                                   class_names=[f"{task.name}-{i}" for i in range(n)])
    return ctx.memo(f"task:{task.name}", make)


def _train_or_fetch_teacher(ctx: BuildContext, ref, wd: Path, filename: str, task=None) -> dict:
    """Train one teacher, or take it from the content-addressed cache shared by all builds."""
    import torch

    from edgekd.distill.trainer import accuracy, train
    from edgekd.zoo import count_params

    s = splits(ctx) if task is None else task_splits(ctx, task)
    if ref.train is None:
        return _given_teacher(ctx, ref, wd, filename, s)
    if ref.uses_shipped:
        return _shipped_teacher(ctx, ref, wd, filename, s)
    if task is None:
        material = {"teacher": _ref_key(ref), "data": ctx.recipe.data.key_dict(exclude={"label_fraction"}),
                    "data_sha256": data_fingerprint(ctx)}
    else:
        material = {"teacher": _ref_key(ref), "data": task.data.key_dict(exclude={"label_fraction"}),
                    "data_sha256": task_splits(ctx, task).fingerprint(), "label_map": task.label_map}
    key = stable_hash(material)
    cached = ctx.cache_dir / "teachers" / key
    # One lock per cache entry, held from the look-up to the publish: a second build that wants the
    # same teacher waits and then reuses it, instead of training it again and racing on the rename.
    with cache_entry(cached, done=lambda p: (p / "teacher.pt").is_file() and (p / "metrics.json").is_file(),
                     on_wait=lambda: ctx.log(f"  waiting for another build training this teacher ({cached})")) as tmp:
        if tmp is None:
            shutil.copy2(cached / "teacher.pt", wd / filename)
            metrics = json.loads((cached / "metrics.json").read_text())
            metrics["cached"] = True
            metrics.setdefault("origin", "trained")  # entries written before origin was recorded
            ctx.log(f"  teacher taken from cache {cached}")
            return metrics
        if ref.onnx:
            raise ConfigError("an ONNX teacher cannot be trained", hint="drop teacher.train: it is used as given")
        from edgekd.zoo.sources import check_model_on_data

        model = build_model(ref, seed=ref.train.seed, log=ctx.log)
        check_model_on_data(model, s.x_val, s.num_classes, "teacher", ref.describe())
        ckpt = checkpoint_path(ctx, "teacher", material)
        res = train(model, s.x_train, s.y_train, s.x_val, s.y_val, ref.train, checkpoint=ckpt,
                    progress=ctx.progress, description="teacher")
        model.load_state_dict(res.best_state)
        torch.save(model.state_dict(), wd / filename)
        metrics = {"params": count_params(model), "val_accuracy": res.best_val_accuracy, "best_epoch": res.best_epoch,
                   "test_accuracy": accuracy(model, s.x_test, s.y_test), "train_seconds": res.seconds,
                   "history": res.history, "cached": False, "cache_key": key, "origin": "trained"}
        shutil.copy2(wd / filename, tmp / "teacher.pt")
        write_json_atomic(tmp / "metrics.json", metrics)
    ckpt.unlink(missing_ok=True)
    return metrics


def _shipped_teacher(ctx: BuildContext, ref, wd: Path, filename: str, s) -> dict:
    """A teacher from the weights its `train` section produced earlier, shipped beside the card:
    copied into the stage folder, the copy's sha256 checked against the card (the bytes checked
    are the bytes loaded), loaded into the model, checked against the data and its accuracy
    measured like a trained teacher's. A failure leaves nothing: the stage folder is temporary."""
    import torch

    from edgekd.distill.trainer import accuracy
    from edgekd.zoo import count_params
    from edgekd.zoo.sources import check_model_on_data, check_shipped, load_weights

    src = ref.shipped_file()
    copy = wd / f".shipped{src.suffix}"
    try:
        shutil.copyfile(src, copy)
    except FileNotFoundError:
        pass  # check_shipped names the missing file
    check_shipped(ref, copy if copy.is_file() else src)
    model = build_model(ref.model_copy(update={"weights": None}), log=ctx.log)  # the shipped state replaces any initial weights
    load_weights(model, copy)
    check_model_on_data(model, s.x_val, s.num_classes, "teacher", ref.describe())
    torch.save(model.state_dict(), wd / filename)
    copy.unlink()
    ctx.log(f"  teacher from shipped weights {ref.shipped.path} (sha256 {ref.shipped.sha256[:12]}..., verified), "
            "not trained: measuring its accuracy")
    return {"params": count_params(model), "val_accuracy": accuracy(model, s.x_val, s.y_val),
            "test_accuracy": accuracy(model, s.x_test, s.y_test), "best_epoch": None, "train_seconds": 0.0,
            "history": [], "cached": False, "origin": "shipped",
            "shipped": {"path": ref.shipped.path, "sha256": ref.shipped.sha256}}


def _given_teacher(ctx: BuildContext, ref, wd: Path, filename: str, s) -> dict:
    """A teacher used as given (no `train`): built from its source, checked against the data, its
    accuracy measured on val and test like a trained one's. Its state dict (or ONNX file) is the
    stage's output, so later stages never read the user's files again."""
    import torch

    from edgekd.distill.trainer import accuracy
    from edgekd.zoo import count_params

    if ref.arch and not ref.weights:
        raise ConfigError(f"teacher '{ref.arch}' has no weights and no train section",
                          hint="give teacher.weights (a trained state dict), or teacher.train to train it first")
    from edgekd.zoo.sources import check_model_on_data

    model = build_model(ref, log=ctx.log)
    check_model_on_data(model, s.x_val, s.num_classes, "teacher", ref.describe())
    if ref.onnx:
        shutil.copy2(Path(ref.onnx).expanduser(), wd / filename)
        from edgekd.zoo.sources import onnx_params

        params = onnx_params(wd / filename)
    else:
        torch.save(model.state_dict(), wd / filename)
        params = count_params(model)
    ctx.log(f"  teacher used as given ({ref.describe()}): measuring its accuracy")
    return {"params": params, "val_accuracy": accuracy(model, s.x_val, s.y_val),
            "test_accuracy": accuracy(model, s.x_test, s.y_test), "best_epoch": None, "train_seconds": 0.0,
            "history": [], "cached": False, "given": True, "source": ref.describe(), "origin": "given"}


def _teacher_file(ref, stem: str) -> str:
    return f"{stem}.onnx" if ref.onnx else f"{stem}.pt"


def stage_teacher(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    fname = _teacher_file(ctx.recipe.teacher, "teacher")
    metrics = _train_or_fetch_teacher(ctx, ctx.recipe.teacher, wd, fname)
    outputs = {"model": fname}
    extra = []
    for i, ref in enumerate(ctx.recipe.distill.extra_teachers, start=1):
        extra.append(_train_or_fetch_teacher(ctx, ref, wd, _teacher_file(ref, f"teacher-{i}")))
        outputs[f"extra_{i}"] = _teacher_file(ref, f"teacher-{i}")
    if extra:
        metrics["extra_teachers"] = [{k: m.get(k) for k in ("params", "val_accuracy", "test_accuracy", "cached")} for m in extra]
    tasks = {}
    for task in ctx.recipe.distill.tasks:
        tfile = _teacher_file(task.teacher, f"teacher-task-{task.name}")
        m = _train_or_fetch_teacher(ctx, task.teacher, wd, tfile, task=task)
        outputs[f"task_{task.name}"] = tfile
        tasks[task.name] = {k: m.get(k) for k in ("params", "val_accuracy", "test_accuracy", "cached")}
    if tasks:
        metrics["tasks"] = tasks
    return StageOutput(outputs, metrics)


# --------------------------------------------------------------------------- distill

def _distill_cfg(ctx: BuildContext) -> dict:
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
    from edgekd.distill import ddp
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
    from edgekd.distill import ddp
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
                   world: int, with_views: bool) -> dict:
    """The labels-only control (edgekd.distill.control): the KD student's architecture, seed and init,
    the same epochs, batches and (augmented) inputs, hard labels only. Saved as control.pt."""
    import torch

    from edgekd.distill.cache import AugmentedViews
    from edgekd.distill.control import control_metrics, train_control
    from edgekd.distill.trainer import accuracy, augment_images
    from edgekd.zoo.text import adopt_trained_teacher

    control = build_model(ctx.recipe.student, seed=dc.seed)
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


def stage_distill(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import torch

    from edgekd.distill import ddp
    from edgekd.distill.losses import LOGIT_LOSSES, build_losses
    from edgekd.distill.trainer import accuracy, train
    from edgekd.distill.weighting import build_weighting
    from edgekd.errors import ConfigError
    from edgekd.zoo import count_params
    from edgekd.zoo.text import adopt_trained_teacher

    from edgekd.zoo.sources import check_model_on_data

    s = splits(ctx)
    dc = ctx.recipe.distill
    onnx_teachers = [r.describe() for r in (ctx.recipe.teacher, *dc.extra_teachers) if r.onnx]
    if onnx_teachers:
        # onnxruntime gives logits, not activations or gradients: logit losses through the cache only
        other = [lc.kind for lc in dc.losses if lc.kind not in LOGIT_LOSSES]
        if other:
            raise ConfigError(f"distill loss '{other[0]}' needs the teacher's activations, but the teacher "
                              f"({onnx_teachers[0]}) is an ONNX file that gives logits only",
                              hint=f"keep only {' / '.join(LOGIT_LOSSES)} losses, or bring the teacher as a torch model (factory + weights)")
        if dc.augment:
            raise ConfigError("an ONNX teacher's logits are computed once into the teacher-logit cache, on the "
                              "un-augmented inputs, but distill.augment is on",
                              hint="set distill.augment=false")
        if dc.tasks or dc.born_again_generations:
            raise ConfigError("multi-task and born-again distillation need a torch teacher, not an ONNX file",
                              hint="drop distill.tasks / born_again_generations, or bring the teacher as a torch model")
    rank, world = ddp.init("cpu")
    teacher = _teacher_module(ctx, inputs["teacher"])
    student = build_model(ctx.recipe.student, seed=dc.seed, log=ctx.log)
    check_model_on_data(student, s.x_val, s.num_classes, "student", ctx.recipe.student.describe())
    # None unless the student asks for init_from: trained_teacher (a narrower one is pruned on training samples)
    init = adopt_trained_teacher(student, teacher, torch.as_tensor(s.x_train[:512]))
    with torch.no_grad():
        t_out = teacher(torch.as_tensor(s.x_val[:2]))
        s_out = student(torch.as_tensor(s.x_val[:2]))
    if t_out.shape[-1] != s_out.shape[-1]:
        raise ConfigError(f"teacher outputs {t_out.shape[-1]} classes, student {s_out.shape[-1]}",
                          hint="set the student's num_classes to the teacher's")
    example = torch.as_tensor(s.x_val[:8])
    loss_set = build_losses(dc.losses, student, teacher, example)
    cached_logits, views = None, None
    if dc.teacher_cache.enabled or onnx_teachers:
        if loss_set.needs_online_teacher:
            raise ConfigError("distill.teacher_cache holds teacher logits only, but a feature/attention/hidden_state/"
                              "relation loss needs the teacher's activations",
                              hint=f"set distill.teacher_cache.enabled=false, or keep only {'/'.join(LOGIT_LOSSES)} losses")
        if dc.augment:  # with teacher_cache.views (the card refuses augmentation with an un-augmented cache)
            views = _view_caches(ctx, teacher, inputs["teacher"], s.x_train, rank, world)
        else:
            cached_logits = _logit_cache(ctx, teacher, inputs["teacher"], s.x_train, rank, world).get
    # born-again generations replace `teacher` and drop the views; the control copies generation 1's setup
    main_teacher, kd_views = teacher, views is not None
    weighting = build_weighting(dc.weighting)
    from edgekd.distill.multitask import build_aux_task

    aux = [build_aux_task(t, student, load_model(t.teacher, inputs["teacher"].path(f"task_{t.name}")),
                          task_splits(ctx, t)) for t in dc.tasks]
    key_material = _distill_cfg(ctx) | {"teacher": inputs["teacher"].key}
    generations = []
    for gen in range(dc.born_again_generations + 1):
        ckpt = checkpoint_path(ctx, f"distill-g{gen}", key_material)
        res = train(student, s.x_train, s.y_train, s.x_val, s.y_val, dc, teacher=teacher, loss_set=loss_set,
                    teacher_logits=cached_logits, weighting=weighting, labeled=s.labeled,
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
            import copy

            teacher = copy.deepcopy(student).eval()
            student = build_model(ctx.recipe.student, seed=dc.seed + gen + 1)
            loss_set = build_losses(dc.losses, student, teacher, example)
            cached_logits = None  # the cache belongs to the original teacher
            views = None
    best = max(generations, key=lambda g: g["val_accuracy"])
    student.load_state_dict(best["state"])
    torch.save(student.state_dict(), wd / "student.pt")
    outputs = {"model": "student.pt"}
    task_metrics = {}
    if aux:
        from edgekd.distill.multitask import aux_accuracy

        torch.save({t.name: t.head.state_dict() for t in aux}, wd / "task_heads.pt")
        outputs["task_heads"] = "task_heads.pt"
        for t in aux:
            ts = task_splits(ctx, next(c for c in dc.tasks if c.name == t.name))
            task_metrics[t.name] = {"test_accuracy": aux_accuracy(t, student, ts.x_test, ts.y_test),
                                    "weight": t.weight, "head_from": t.head_from}
    control = None
    if dc.control:
        control = _train_control(ctx, dc, s, main_teacher, student, key_material, wd, rank, world, kd_views)
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
    return StageOutput(outputs, metrics)


# --------------------------------------------------------------------------- export


def _export_cfg(ctx: BuildContext) -> dict:
    return {"onnx": ctx.target.onnx.model_dump(), "parity": ctx.target.parity.model_dump()}


def stage_export(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import torch

    from edgekd.distill.trainer import predict
    from edgekd.export.onnx import check_parity, export_onnx
    from edgekd.runtimes.ort import run_onnx

    s = splits(ctx)
    oc, pc = ctx.target.onnx, ctx.target.parity
    x = s.x_val[: pc.samples]
    batch = 1 if oc.dynamic_batch else oc.static_batch
    example = torch.as_tensor(s.x_val[:batch])
    # token ids [batch, seq]: the sequence axis is dynamic too where the batch is
    text = oc.dynamic_batch and np.issubdtype(s.x_val.dtype, np.integer) and s.x_val.ndim == 2
    metrics: dict[str, Any] = {"opset": oc.opset, "dynamic_batch": oc.dynamic_batch, "dynamic_sequence": bool(text)}
    for role, ref in (("student", ctx.recipe.student), ("teacher", ctx.recipe.teacher)):
        if ref.onnx:  # an ONNX teacher is its own export: copied so the build folder holds every artifact
            path = wd / f"{role}.onnx"
            shutil.copy2(inputs["teacher"].path("model"), path)
            metrics[f"{role}_parity"] = {"skipped": "the teacher was given as ONNX"}
            metrics[f"{role}_size_bytes"] = path.stat().st_size
            continue
        model = load_model(ref, inputs["distill" if role == "student" else "teacher"].path("model"))
        path = export_onnx(model, example, wd / f"{role}.onnx", oc.opset, oc.dynamic_batch, dynamic_sequence=text)
        ref_out = predict(model, x).numpy()
        got = run_onnx(path, x)
        metrics[f"{role}_parity"] = check_parity(ref_out, got, pc.atol, pc.rtol, f"{role} ONNX export")
        metrics[f"{role}_size_bytes"] = path.stat().st_size
    metrics["input_name"] = "input"
    metrics["input_shape"] = [batch, *s.x_train.shape[1:]]
    outputs = {"student": "student.onnx", "teacher": "teacher.onnx"}
    tok_spec = s.normalization.get("tokenizer")
    if tok_spec:  # text: the tokenizer ships beside the models, so the ONNX can be fed as trained
        from edgekd.zoo.text import load_tokenizer

        load_tokenizer(tok_spec).save_pretrained(str(wd / "tokenizer"))
        files = sorted(f.name for f in (wd / "tokenizer").iterdir() if f.is_file())
        outputs.update({f"tokenizer/{f}": f"tokenizer/{f}" for f in files})
        metrics["tokenizer"] = {"source": tok_spec, "max_length": s.normalization.get("max_length"),
                                "folder": "tokenizer", "files": files}
    return StageOutput(outputs, metrics)


# --------------------------------------------------------------------------- quantize


def candidate_plan(ctx: BuildContext) -> tuple[list[str], list[dict[str, str]]]:
    """(the candidates this build makes, [{variant, kind, reason}] for those it does not).

    The recipe's quantize.candidates replace the target card's, and then the target decides: a
    candidate whose kind the target's family cannot ship (an INT8 ONNX for ATC) is not built, and
    the report lists it as unsupported-on-target. A recipe is written for any target, so its list
    is filtered; a list the user gave for this build (--set quantize.candidates) is taken as meant,
    and one it cannot ship is a ConfigError (exit 2) before any training.
    """
    from edgekd.targets import split_candidates

    names = ctx.recipe.quantize.candidates or list(ctx.target.candidates)
    names = ["fp32"] + [n for n in names if n != "fp32"]  # fp32 is the reference, always first
    kept, dropped = split_candidates(ctx.target, names)  # unknown names: ConfigError naming the near match
    if dropped and ({"quantize.candidates", "quantize"} & set(ctx.overrides)):
        from edgekd.targets.base import shippable_names

        fam = family(ctx.target)
        bad = ", ".join(x["variant"] for x in dropped)
        raise ConfigError(f"--set quantize.candidates: {bad} cannot ship on target '{ctx.target.name}' ({fam.name}): "
                          + "; ".join(dict.fromkeys(x["reason"] for x in dropped)),
                          hint=f"leave {bad} out of quantize.candidates (a {fam.name} target ships "
                               f"{', '.join(shippable_names(fam))}), or build {bad} with --target cpu"
                               + (f"; {fam.cannot_ship_hint}" if fam.cannot_ship_hint else ""))
    return kept, dropped


def _quantize_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import check_options

    # Names (and whether the target can ship them) and options are checked here, in the
    # pipeline's pre-flight, before any training.
    kept, dropped = candidate_plan(ctx)
    check_options(ctx.recipe.quantize.options)
    if dropped and ctx.console is not None:  # said once per build, at pre-flight (the memo is shared by every view of ctx)
        from edgekd.targets import dropped_line

        line = dropped_line(ctx.target, dropped, kept)
        ctx.memo("candidates-not-built", lambda: ctx.console.print(line, soft_wrap=True, markup=False) or True)
    # The budget is part of the key: the accuracy-aware fallback depends on it.
    return {"candidates": kept, "quantize": ctx.recipe.quantize.model_dump(exclude=set(SELECTION_FIELDS))}


def quantize_plan(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """A classifier's candidates are judged by top-1 accuracy through onnxruntime (validation to choose, test
    to report), with their agreement with fp32 and an OpenVINO cross-check recorded beside it."""
    import hashlib

    from edgekd.quantize.candidates import check_options
    from edgekd.runtimes.ort import run_onnx
    from edgekd.tasks.base import QuantizePlan

    s = splits(ctx)
    q = ctx.recipe.quantize
    rng = np.random.default_rng(ctx.recipe.data.seed)
    calib = s.x_train[rng.permutation(len(s.x_train))[: q.calibration_samples]]
    ref_val = run_onnx(inputs["export"].path("student"), s.x_val)
    names, not_built = candidate_plan(ctx)
    options = {**q.model_dump(exclude={"options", "accuracy_aware", "candidates", "accuracy_budget", *SELECTION_FIELDS}),
               **check_options(q.options)}

    def evaluate(x: np.ndarray, y: np.ndarray):
        def ev(path: Path) -> dict[str, Any]:
            out = run_onnx(path, x)
            return {"score": float((out.argmax(1) == y).mean()), "outputs": out}
        return ev

    def fields(name: str, path: Path, val: dict, test: dict) -> dict[str, Any]:
        out = val["outputs"]
        return {"agreement_with_fp32": float((out.argmax(1) == ref_val.argmax(1)).mean()),
                "max_abs_diff_vs_fp32": float(np.abs(out - ref_val).max()),
                "openvino": _openvino_check(path, s.x_val[:64], out[:64], name, ctx)}

    return QuantizePlan(names=names, not_built=not_built, options=options, calib=calib,
                        validate=evaluate(s.x_val, s.y_val), test=evaluate(s.x_test, s.y_test), fields=fields,
                        metric="top-1 accuracy", grouping="node", special={QAT: lambda dst: _qat(inputs, ctx, dst, calib)},
                        metrics={"calibration_samples": int(len(calib)),
                                 "calibration_sha256": hashlib.sha256(calib.tobytes()).hexdigest()})


QAT = "int8-qat"  # needs the torch student and teacher, so it is made here rather than in the ONNX registry


def _qat(inputs: dict[str, StageResult], ctx: BuildContext, out: Path, calib: np.ndarray) -> dict[str, Any]:
    """Quantization-aware distillation: NNCF fake-quantizes the student, the teacher keeps guiding."""
    from edgekd.quantize.candidates import check_options
    from edgekd.quantize.qat import qat_candidate

    s = splits(ctx)
    student = load_model(ctx.recipe.student, inputs["distill"].path("model"))
    teacher = _teacher_module(ctx, inputs["teacher"])
    opts = check_options(ctx.recipe.quantize.options)
    import hashlib

    # Per-epoch checkpoint, keyed like the stage (inputs, settings, calibration data): a killed build resumes it.
    ckpt = checkpoint_path(ctx, "qat", {"inputs": {k: v.key for k, v in sorted(inputs.items())},
                                        "calibration_sha256": hashlib.sha256(calib.tobytes()).hexdigest(),
                                        "quantize": ctx.recipe.quantize.model_dump(),
                                        "distill": ctx.recipe.distill.model_dump(), "onnx": ctx.target.onnx.model_dump()})
    info = qat_candidate(student, teacher, s.x_train, s.y_train, s.x_val, s.y_val, calib, out,
                         losses=ctx.recipe.distill.losses, train_cfg=ctx.recipe.distill, opset=ctx.target.onnx.opset,
                         dynamic_batch=ctx.target.onnx.dynamic_batch, progress=ctx.progress,
                         epochs=opts.get("qat_epochs"), lr_scale=float(opts.get("qat_lr_scale", 0.1)),
                         checkpoint=ckpt)
    ckpt.unlink(missing_ok=True)
    return {k: v for k, v in info.items() if k != "history"}


def _openvino_check(path: Path, x: np.ndarray, ref: np.ndarray, name: str, ctx: BuildContext) -> dict[str, Any]:
    """Run the artifact in OpenVINO, an independent runtime, and compare with onnxruntime's outputs.
    fp32/fp16 must agree within the card's tolerance; quantized graphs (whose integer kernels round
    differently between runtimes) must agree on the top-1 class."""
    pc = ctx.target.parity
    exact = name in ("fp32", "fp16")
    try:
        from edgekd.runtimes.openvino_rt import openvino_parity

        return openvino_parity(path, x, ref, atol=pc.atol * (10 if name == "fp16" else 1), rtol=pc.rtol,
                               min_top1=None if exact else 0.98)
    except Exception as e:  # OpenVINO lacking an op (e.g. ConvInteger) is recorded, not fatal
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}


# --------------------------------------------------------------------------- profile


def _profile_settings(ctx: BuildContext):
    """How every model is timed: the target card's [profile] table and providers; energy estimates
    use the machine that runs the profile (this host for mobile/Ascend), never the card's device."""
    from edgekd.profile.spec import ProfileSettings

    _, _, dev = where_profiled(ctx)
    return ProfileSettings.from_card(ctx.target, dev, seed=ctx.recipe.data.seed)


def _profile_cfg(ctx: BuildContext) -> dict:
    # The card sections are keyed through `reads`; what is derived from the host is keyed here.
    return {"settings": _profile_settings(ctx).model_dump(mode="json"), "profiled_on": where_profiled(ctx)[0]}


def profile_models(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path, tick) -> tuple[dict, dict, dict]:
    """Time teacher (PyTorch eager and ONNX) and every student candidate, each in its own
    subprocess, interleaved across repeats; estimate energy; count FLOPs."""
    from edgekd.profile.measure.energy import measured_or_estimate
    from edgekd.profile.measure.flops import host_roofline
    from edgekd.profile.runner import interleaved_profile, measure_host_peak
    from edgekd.profile.spec import ProfileSpec
    from edgekd.profile.standalone import describes_host

    s = splits(ctx)
    p = ctx.target.profile
    np.save(wd / "inputs.npy", s.x_test[:256])
    input_shape = inputs["export"].metrics["input_shape"]
    measured_on, ran_on, dev = where_profiled(ctx)
    common = ProfileSpec(**_profile_settings(ctx).model_dump(), kind="onnx", input_shape=input_shape,
                         input_file=str(wd / "inputs.npy"))
    t_ref = ctx.recipe.teacher
    specs: dict[str, ProfileSpec] = {}
    if not t_ref.onnx:  # an ONNX teacher has no PyTorch form to time
        specs["teacher/fp32-torch"] = common.with_model(
            kind="torch", path=str(inputs["teacher"].path("model")), arch=t_ref.arch, kwargs=t_ref.kwargs,
            input_dtype=str(s.x_test.dtype),
            # the worker rebuilds any model source from the card's reference
            model_ref=t_ref.model_ref().model_dump() | {"weights": None})
    specs["teacher/fp32"] = common.with_model(path=str(inputs["export"].path("teacher")))
    for c in inputs["quantize"].metrics["candidates"]:
        if c["error"] is None:
            specs[f"student/{c['variant']}"] = common.with_model(path=str(inputs["quantize"].dir / c["path"]))
    logs = wd / "logs"
    results = interleaved_profile(specs, repeats=p.repeats, workdir=logs,
                                  progress=lambda name, r, n: tick(f"profile {name} (repeat {r}/{n})",
                                                                   len(specs) * p.repeats))
    # Every latency above was measured on this host: its rooflines use this host's FP32 peak at the
    # profiled thread count, measured now (the card's peak is for the device when it is absent).
    host = measure_host_peak(p.threads, logs)
    host = {k: host.get(k) for k in ("peak_gflops", "method", "matrix", "threads", "seconds", "blas")}
    bandwidth = ctx.target.device.mem_bandwidth_gbs if describes_host(ctx.target) else None
    out: dict[str, Any] = {}
    for name, r in results.items():
        # Energy estimates and roofline peaks are those of the machine that ran the model: for a
        # mobile/Ascend build that is this host, never the target card's device.
        energy = r.get("energy") or measured_or_estimate(r["cpu_seconds_per_inference"], dev)
        path = specs[name].path if specs[name].kind == "onnx" else str(inputs["export"].path("teacher"))
        # Counted at the profiled input shape: token-id models have a symbolic sequence axis.
        flops, rf = host_roofline(path, r["latency_ms"]["p50"], host, shape=list(input_shape),
                                  mem_bandwidth_gbs=bandwidth)
        if flops.get("error"):
            # FLOPs and roofline are derived figures: a graph shape inference cannot read loses them,
            # not the latency/memory/energy already measured.
            ctx.log(f"warning: no FLOP count for {name}: {flops['error']}")
        elif not flops.get("complete"):
            ctx.log(f"warning: incomplete FLOP count for {name} ({flops.get('unresolved')} ops unresolved): "
                    "no roofline efficiency")
        out[name] = {**r, "energy": energy, "flops": flops, "roofline": rf, "measured_on": measured_on, "device": ran_on}
    teacher_dev = _teacher_on_device(ctx, inputs, s)
    if teacher_dev is not None:
        out[teacher_dev[0]] = teacher_dev[1]
    return out, {"settings": p.model_dump(), "host": host}, {"inputs": "inputs.npy"}


def where_profiled(ctx: BuildContext) -> tuple[str, str, Any]:
    """(measured_on, machine name, its DeviceConfig) of the profile stage's runs: the family's hook."""
    return family(ctx.target).where_profiled(ctx.target)


def _teacher_on_device(ctx: BuildContext, inputs: dict[str, StageResult], s) -> tuple[str, dict] | None:
    """The PyTorch teacher on the target's accelerator (the family's hook), when it has one here."""
    if ctx.recipe.teacher.onnx:  # a teacher given as ONNX has no PyTorch form to run on the device
        return None
    batch = inputs["export"].metrics["input_shape"][0]
    return family(ctx.target).profile_teacher_on_device(
        lambda: load_model(ctx.recipe.teacher, inputs["teacher"].path("model")), s.x_test[:batch], ctx.target)


# --------------------------------------------------------------------------- convert


def convert_job(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """The target family's job for the selected student (Ascend bundle, mobile .pte/.ort)."""
    from edgekd.distill.trainer import predict
    from edgekd.quantize.candidates import evaluate_onnx
    from edgekd.targets import ClassifierPayload, ConvertJob

    s = splits(ctx)
    selected = inputs["select"].metrics["selected"]
    cand = next(c for c in inputs["quantize"].metrics["candidates"] if c["variant"] == selected)
    student = load_model(ctx.recipe.student, inputs["distill"].path("model"))
    x_check = s.x_val[:64]  # int8 artifacts are judged on top-1 agreement: 64 samples make that meaningful
    rng = np.random.default_rng(ctx.recipe.data.seed)
    calib = s.x_train[rng.permutation(len(s.x_train))[: ctx.recipe.quantize.calibration_samples]]
    payload = ClassifierPayload(class_names=s.class_names, normalization=s.normalization, x_test=s.x_test,
                                y_test=s.y_test, x_val=s.x_val, y_val=s.y_val,
                                student_accuracy=inputs["distill"].metrics.get("test_accuracy"))
    job = ConvertJob(wd=wd, target=ctx.target, selected=selected, onnx_path=inputs["quantize"].dir / cand["path"],
                     fp32_onnx=inputs["export"].path("student"), student=student, example={"input": x_check},
                     expected=[predict(student, x_check).numpy()], calib={"input": calib},
                     input_shapes={"input": inputs["export"].metrics["input_shape"]},
                     evaluate=lambda path: evaluate_onnx(path, s.x_val, s.y_val),
                     budget_points=ctx.recipe.quantize.accuracy_budget, payload=payload, options=dict(ctx.options),
                     host_device=host_device(), log=ctx.log)
    return job


# --------------------------------------------------------------------------- report


def report_parts(build_dir: Path, res: dict[str, dict], run: dict):
    """A classification build's rows: the teacher in PyTorch (unless given as ONNX), its ONNX export on
    onnxruntime, the teacher on the target's accelerator when profiled there, every student candidate."""
    from edgekd.hostinfo import cpu_name
    from edgekd.report.build import candidate_row, control_entry, teacher_origin_note
    from edgekd.tasks.base import ReportParts

    t, d, e, q, p, sel = (res[n] for n in ("teacher", "distill", "export", "quantize", "profile", "select"))
    prof, settings = p["metrics"]["models"], p["metrics"]["settings"]

    def model_entry(role: str, variant: str, fmt: str, runtime: str, path: Path, params: int, acc: float) -> dict:
        pr = prof.get(f"{role}/{variant}", {})
        return {"role": role, "variant": variant, "format": fmt, "runtime": runtime,
                # builds made before measured_on existed ran everything on the host
                "measured_on": pr.get("measured_on", "host"), "device": pr.get("device", cpu_name()),
                "throughput_batch": settings.get("throughput_batch"),
                "path": os.path.relpath(path, build_dir), "params": params, "size_bytes": path.stat().st_size,
                "accuracy": acc, "latency_ms": pr.get("latency_ms"), "throughput_per_s": pr.get("throughput_per_s"),
                "throughput_sweep": pr.get("throughput_sweep"), "peak_rss_bytes": pr.get("peak_rss_bytes"),
                "peak_rss_delta_bytes": pr.get("peak_rss_delta_bytes"), "energy": pr.get("energy"),
                "flops": pr.get("flops"), "roofline": pr.get("roofline"), "spread": pr.get("spread"),
                "noisy": pr.get("noisy")}

    tm, teacher_file = t["metrics"], build_dir / "teacher" / t["outputs"]["model"]
    onnx_teacher = str(t["outputs"]["model"]).endswith(".onnx")  # given as ONNX: no PyTorch form to time
    models = [] if onnx_teacher else [
        model_entry("teacher", "fp32-torch", "pytorch", "torch-eager", teacher_file, tm["params"], tm["test_accuracy"])]
    models.append(model_entry("teacher", "fp32", "onnx", "onnxruntime", build_dir / "export" / e["outputs"]["teacher"],
                              tm["params"], tm["test_accuracy"]))
    for key, pr in prof.items():  # the teacher on the target's accelerator (torch cuda / torch_npu)
        if key.startswith("teacher/fp32-torch-"):
            models.append({**model_entry("teacher", key.split("/", 1)[1], "pytorch", pr["runtime"], teacher_file,
                                         tm["params"], tm["test_accuracy"]), "peak_memory_bytes": pr.get("peak_memory_bytes")})
    candidates = []
    status = {c["variant"]: c["status"] for c in sel["metrics"]["candidates"]}
    for c in q["metrics"]["candidates"]:
        row = candidate_row(c, ("variant", "format", "accuracy", "val_accuracy", "size_bytes", "error",
                                "agreement_with_fp32", "max_abs_diff_vs_fp32"), status, prof)
        row["kept_fp32_nodes"] = (c.get("accuracy_aware") or {}).get("kept_fp32_nodes") or []
        row["openvino"] = c.get("openvino")
        candidates.append(row)
        if c.get("error") is None:
            models.append(model_entry("student", c["variant"], "onnx", "onnxruntime",
                                      build_dir / "quantize" / c["path"], d["metrics"]["params"], c["accuracy"]))
    fp32 = next((m for m in models if m["role"] == "student" and m["variant"] == "fp32"), None)
    control = control_entry(d["metrics"].get("control"), fp32["accuracy"] if fp32 else None)
    training = {"teacher": {k: tm.get(k) for k in ("val_accuracy", "test_accuracy", "train_seconds", "cached",
                                                   "best_epoch", "given", "source", "origin", "shipped")},
                "student": {k: d["metrics"].get(k) for k in ("val_accuracy", "test_accuracy", "train_seconds",
                                                             "best_epoch", "losses", "labeled_samples",
                                                             "unlabeled_samples")},
                "control": control}
    return ReportParts(models=models, candidates=candidates, teacher_same_runtime="teacher/fp32", training=training,
                       parity={k: v for k, v in e["metrics"].items() if k.endswith("_parity")}, control=control,
                       notes=[teacher_origin_note(tm)])


# --------------------------------------------------------------------------- the task


def front() -> list[Stage]:
    return [
        Stage("teacher", stage_teacher, [], _teacher_cfg,
              reads=("recipe.teacher", "recipe.data", "recipe.distill.extra_teachers", "recipe.distill.tasks")),
        Stage("distill", stage_distill, ["teacher"], _distill_cfg,
              reads=("recipe.student", "recipe.teacher", "recipe.distill", "recipe.data")),
        Stage("export", stage_export, ["teacher", "distill"], _export_cfg,
              reads=("recipe.student", "recipe.teacher", "recipe.data", "target.onnx", "target.parity")),
    ]


def graph() -> list[Stage]:
    """The whole stage graph of a classification recipe (the shared stages after `front`)."""
    from edgekd.tasks.stages import graph as task_graph

    return task_graph(TASK)


TASK = Task(
    name="classification", recipe_tasks=("image-classification", "tabular-classification", "text-classification"),
    summary="a classifier: top-1 accuracy; teacher trained, cached, shipped or given; logit/feature/relation KD",
    front=front,
    # int8-qat fine-tunes the student with the teacher: it reads the distillation settings too
    quantize_deps=("teacher", "distill", "export"),
    quantize_reads=("recipe.quantize", "recipe.data", "recipe.student", "recipe.teacher", "recipe.distill",
                    "target.onnx", "target.parity", "target.candidates",
                    "target.runtime", "target.providers"),  # runtime + providers: the family, which filters candidates
    quantize_cfg=_quantize_cfg, quantize_plan=quantize_plan,
    profile_deps=("teacher", "export", "quantize"), profile_reads=("recipe.data", "recipe.teacher", "target"),
    profile_cfg=_profile_cfg, profile_models=profile_models,
    report_stages=("teacher", "distill", "export", "quantize", "profile", "select"), report_parts=report_parts,
    convert_deps=("distill", "export", "quantize", "select"),
    convert_reads=("recipe.student", "recipe.data", "recipe.quantize", "target"), convert_job=convert_job,
)
