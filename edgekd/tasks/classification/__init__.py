"""The classification task: what a classifier's build does its own way.

Its stages teacher → distill → export, and the hooks the shared stages (tasks/stages/: quantize,
profile, select, convert, report) call: how a candidate is judged (top-1 accuracy through
onnxruntime), how its models are timed (batches in fresh processes, interleaved), its conversion
job and its report rows. Each stage function writes only inside its `wd` and returns a StageOutput.
"""
from __future__ import annotations

from edgekd.pipeline import Stage
from edgekd.tasks.base import Task
from edgekd.tasks.classification.distill import _distill_cfg, stage_distill
from edgekd.tasks.classification.export import _export_cfg, stage_export
from edgekd.tasks.classification.search import _search_cfg, searching, stage_search
from edgekd.tasks.classification.hooks import (QUANTIZED_TEACHER_ALLOWED, QUANTIZED_TEACHER_KINDS, _profile_cfg,
                                               _quantize_cfg, _quantized_teacher_cfg, candidate_plan, convert_job,
                                               profile_models, quantize_plan, quantized_teacher_models, report_parts,
                                               where_profiled)
from edgekd.tasks.classification.teacher import _teacher_cfg, stage_teacher

__all__ = ["TASK", "front", "graph", "candidate_plan", "where_profiled"]


# --------------------------------------------------------------------------- the task


def front() -> list[Stage]:
    return [
        Stage("teacher", stage_teacher, [], _teacher_cfg,
              reads=("recipe.teacher", "recipe.data", "recipe.distill.extra_teachers", "recipe.distill.tasks")),
        # only when student.search sets a budget: the student's architecture is chosen by measuring on the target
        Stage("search", stage_search, ["teacher"], _search_cfg, when=searching,
              reads=("recipe.student", "recipe.teacher", "recipe.data", "recipe.distill", "recipe.quantize", "target")),
        Stage("distill", stage_distill, ["teacher", "search"], _distill_cfg, parallel=True,
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
    # the teacher's FP32 ONNX quantized (int8-dynamic, int8-qdq) beside the student: report rows only, never selected
    quantized_teacher_kinds=QUANTIZED_TEACHER_KINDS, quantized_teacher_allowed=QUANTIZED_TEACHER_ALLOWED,
    quantized_teacher_deps=("teacher", "export"),
    quantized_teacher_reads=("recipe.evaluate.quantized_teacher", "recipe.quantize", "recipe.data", "target"),
    quantized_teacher_cfg=_quantized_teacher_cfg, quantized_teacher=quantized_teacher_models,
)
