"""The classification task's export stage: student and teacher to ONNX, each checked against PyTorch."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.classification.student import trained_student_ref
from edgekd.tasks.common import load_model, splits



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
        if role == "student":
            ref = trained_student_ref(ctx, inputs["distill"])  # the search winner's architecture, when searched
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


