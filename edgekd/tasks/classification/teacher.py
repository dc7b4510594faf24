"""The classification task's teacher stage: trained (and cached for every build), taken from shipped
weights, or used as given; its accuracy measured on validation and test either way."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


from edgekd.errors import ConfigError
from edgekd.fsio import cache_entry, write_json_atomic
from edgekd.pipeline import BuildContext, StageOutput, StageResult, stable_hash
from edgekd.tasks.common import build_model, checkpoint_path, data_fingerprint, splits



# --------------------------------------------------------------------------- teacher


def _ref_key(ref) -> dict:
    """A model's cache-key material: its card settings plus the content hashes of the files it
    comes from (weights, ONNX, HF folder, factory source), so editing them re-runs the stage."""
    from edgekd.zoo.files import fingerprint

    d = ref.key_dict()
    files = fingerprint(ref)
    if files:
        d["files_sha256"] = files
    return d


def _teacher_refs(ctx: BuildContext) -> list:
    return [ctx.recipe.teacher, *ctx.recipe.distill.extra_teachers, *(t.teacher for t in ctx.recipe.distill.tasks)]


def _teacher_cfg(ctx: BuildContext) -> dict:
    from edgekd.zoo.files import check_shipped

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
    from edgekd.zoo.files import check_shipped
    from edgekd.zoo.sources import check_model_on_data, load_weights

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


