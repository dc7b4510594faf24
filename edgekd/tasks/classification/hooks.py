"""What the shared stages (tasks/stages/) ask a classifier: how its candidates are made and judged (top-1
accuracy through onnxruntime, an OpenVINO cross-check, QAT), how its models are timed (batches in fresh
processes, interleaved), its conversion job and its report rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config import SELECTION_FIELDS
from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageResult
from edgekd.targets import family
from edgekd.targets.cpu import host_device
from edgekd.tasks.common import checkpoint_path, data_fingerprint, load_model, splits

from edgekd.tasks.classification.distill import _teacher_module
from edgekd.tasks.classification.student import trained_student_ref


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

    from edgekd.runtimes.ort import run_onnx, top1_accuracy
    from edgekd.tasks.base import QuantizePlan

    s = splits(ctx)
    calib = calibration(ctx)
    ref_val = run_onnx(inputs["export"].path("student"), s.x_val)
    names, not_built = candidate_plan(ctx)
    options = _candidate_options(ctx)

    def evaluate(x: np.ndarray, y: np.ndarray):
        def ev(path: Path) -> dict[str, Any]:
            out = run_onnx(path, x)
            return {"score": top1_accuracy(out, y), "outputs": out}
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
    student = load_model(trained_student_ref(ctx, inputs["distill"]), inputs["distill"].path("model"))
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


# --------------------------------------------------------------------------- the quantized teacher


QUANTIZED_TEACHER_KINDS = ("int8-dynamic", "int8-qdq")  # what a user quantizing the teacher would try first
# the ONNX candidate makers (int8-qat needs a student to fine-tune; fp32 is the teacher/fp32 row already)
QUANTIZED_TEACHER_ALLOWED = ("fp16", "int8-dynamic", "int8-qdq", "int8-qdq-u8u8", "int8-qdq-s8s8",
                             "int8-qdq-reduce-range", "int8-nncf", "int8-weight", "int4-weight")


def _candidate_options(ctx: BuildContext) -> dict[str, Any]:
    """The candidate makers' options the student's candidates are made with (quantize_plan's)."""
    from edgekd.quantize.candidates import check_options

    q = ctx.recipe.quantize
    return {**q.model_dump(exclude={"options", "accuracy_aware", "candidates", "accuracy_budget", *SELECTION_FIELDS}),
            **check_options(q.options)}


def calibration(ctx: BuildContext) -> np.ndarray:
    """The calibration samples of every static INT8 artifact of a build (the student's candidates, the search's
    architectures, the quantized teacher, the target's .pte): one seeded draw from the training split."""
    s = splits(ctx)
    rng = np.random.default_rng(ctx.recipe.data.seed)
    return s.x_train[rng.permutation(len(s.x_train))[: ctx.recipe.quantize.calibration_samples]]


def _quantized_teacher_cfg(ctx: BuildContext) -> dict:
    return {"options": _candidate_options(ctx), "data": data_fingerprint(ctx),
            "settings": _profile_settings(ctx).model_dump(mode="json"), "profiled_on": where_profiled(ctx)[0]}


def quantized_teacher_models(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path, kinds: list[str],
                             tick) -> dict[str, dict[str, Any]]:
    """The teacher's FP32 ONNX (the export stage's) made into each kind by the student's candidate makers, options
    and calibration samples, scored on the test split (top-1 accuracy through onnxruntime) and timed by the profile
    stage's benchmark and settings (fresh processes, interleaved across repeats, among themselves)."""
    from edgekd.profile.measure.energy import measured_or_estimate
    from edgekd.profile.runner import interleaved_profile
    from edgekd.profile.spec import ProfileSpec
    from edgekd.quantize.candidates import make_candidate
    from edgekd.runtimes.ort import run_onnx, top1_accuracy
    from edgekd.tasks.stages.quantized_teacher import make_each

    s = splits(ctx)
    src = inputs["export"].path("teacher")
    calib, options = calibration(ctx), _candidate_options(ctx)
    params = inputs["teacher"].metrics.get("params")

    def one(kind: str) -> dict[str, Any]:
        path = wd / f"{kind}.onnx"
        make_candidate(kind, src, path, calib, options)
        acc = top1_accuracy(run_onnx(path, s.x_test), s.y_test)
        tick(f"quantized teacher: {kind}", len(kinds))
        return {"variant": kind, "quantization": kind, "format": "onnx", "runtime": "onnxruntime", "path": path.name,
                "size_bytes": path.stat().st_size, "params": params, "accuracy": acc, "error": None}

    rows = make_each(kinds, one)
    made = {k: r for k, r in rows.items() if r.get("error") is None}
    if made:
        np.save(wd / "inputs.npy", s.x_test[:256])
        common = ProfileSpec(**_profile_settings(ctx).model_dump(), kind="onnx",
                             input_shape=inputs["export"].metrics["input_shape"], input_file=str(wd / "inputs.npy"))
        specs = {k: common.with_model(path=str(wd / r["path"])) for k, r in made.items()}
        measured_on, ran_on, dev = where_profiled(ctx)
        results = interleaved_profile(specs, repeats=ctx.target.profile.repeats, workdir=wd / "logs")
        for k, r in results.items():
            energy = r.get("energy") or measured_or_estimate(r["cpu_seconds_per_inference"], dev)
            made[k]["profile"] = {**r, "energy": energy, "measured_on": measured_on, "device": ran_on}
        import shutil

        shutil.rmtree(wd / "logs", ignore_errors=True)
        (wd / "inputs.npy").unlink()
    return rows


# --------------------------------------------------------------------------- convert


def convert_job(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """The target family's job for the selected student (Ascend bundle, mobile .pte/.ort)."""
    from edgekd.distill.trainer import predict
    from edgekd.runtimes.ort import accuracy
    from edgekd.targets import ClassifierPayload, ConvertJob

    s = splits(ctx)
    selected = inputs["select"].metrics["selected"]
    cand = next(c for c in inputs["quantize"].metrics["candidates"] if c["variant"] == selected)
    student = load_model(trained_student_ref(ctx, inputs["distill"]), inputs["distill"].path("model"))
    x_check = s.x_val[:64]  # int8 artifacts are judged on top-1 agreement: 64 samples make that meaningful
    calib = calibration(ctx)
    payload = ClassifierPayload(class_names=s.class_names, normalization=s.normalization, x_test=s.x_test,
                                y_test=s.y_test, x_val=s.x_val, y_val=s.y_val,
                                student_accuracy=inputs["distill"].metrics.get("test_accuracy"),
                                student_val_accuracy=next((c.get("val_accuracy") for c in inputs["quantize"].metrics["candidates"]
                                                           if c["variant"] == "fp32"), None))
    job = ConvertJob(wd=wd, target=ctx.target, selected=selected, onnx_path=inputs["quantize"].dir / cand["path"],
                     fp32_onnx=inputs["export"].path("student"), student=student, example={"input": x_check},
                     expected=[predict(student, x_check).numpy()], calib={"input": calib},
                     input_shapes={"input": inputs["export"].metrics["input_shape"]},
                     evaluate=lambda path: accuracy(path, s.x_val, s.y_val),
                     budget_points=ctx.recipe.quantize.accuracy_budget, payload=payload, options=dict(ctx.options),
                     host_device=host_device(), log=ctx.log)
    return job


# --------------------------------------------------------------------------- report


def report_parts(build_dir: Path, res: dict[str, dict], run: dict):
    """A classification build's rows: the teacher in PyTorch (unless given as ONNX), its ONNX export on
    onnxruntime, the teacher on the target's accelerator when profiled there, every student candidate."""
    from edgekd.report.build import candidate_row, control_entry, model_row, teacher_origin_note
    from edgekd.tasks.base import ReportParts

    t, d, e, q, p, sel = (res[n] for n in ("teacher", "distill", "export", "quantize", "profile", "select"))
    prof, settings = p["metrics"]["models"], p["metrics"]["settings"]

    def model_entry(role: str, variant: str, fmt: str, runtime: str, path: Path, params: int, acc: float) -> dict:
        return model_row(role, variant, fmt, runtime, prof.get(f"{role}/{variant}", {}),
                         path=os.path.relpath(path, build_dir), params=params, size_bytes=path.stat().st_size,
                         accuracy=acc, throughput_batch=settings.get("throughput_batch"),
                         extra=("throughput_sweep", "flops", "roofline", "spread", "noisy"))

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
    from edgekd.tasks.stages.quantized_teacher import STAGE, read_rows

    at = next((i for i, m in enumerate(models) if m["role"] == "student"), len(models))
    for r in reversed(read_rows(build_dir, run)):  # the teacher quantized, after the teacher rows: never a candidate
        if r.get("error") is None:
            models.insert(at, {**model_row("teacher", r["variant"], r["format"], r["runtime"], r.get("profile") or {},
                                           path=f"{STAGE}/{r['path']}", params=r["params"], size_bytes=r["size_bytes"],
                                           accuracy=r["accuracy"], throughput_batch=settings.get("throughput_batch"),
                                           extra=("throughput_sweep", "spread", "noisy")),
                               "quantization": r["quantization"]})
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


