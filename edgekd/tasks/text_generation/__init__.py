"""The stage graph of `task: text-generation` recipes (smollm2-seqkd).

teacher (GGUF → safetensors, cached) → generate (teacher answers, cached, resumable) → [search: with a
student.search budget, the cut of the teacher that fits it, measured on the target runtime] → distill
(SFT + top-k token KD, optionally token KD on general text: distill.general_text, and the answers-only control)
→ natural (the student on prompts written apart from the training prompts, and its perplexity on held-out natural
text against the teacher's: scored, never chosen on) → export (ONNX with KV cache, parity: logits and
greedy tokens) → quantize (fp32 / int8-dynamic / int8-weight / int4-weight, each evaluated through
onnxruntime) → profile (TTFT, tokens/s, memory, energy per token; each model in its own process)
→ select → quantized_teacher (the teacher itself quantized, beside the student: rows, never selected)
→ report. This module holds what is the language model's own: the stages teacher, generate,
distill and export, and the hooks (QuantizePlan, profile_models, report_parts) the shared stages of
tasks/stages/ call; the quantize loop, selection and report assembly are theirs.

The model-level pieces live in edgekd/llm/ (GGUF teacher, prompts and generation, token
sequences, KV-cache ONNX, the per-model benchmark process); distillation runs through
edgekd/distill/ (the shared `fit` loop, the loss registry, the top-k sequence cache).
"""
from __future__ import annotations

from edgekd.pipeline import Stage
from edgekd.tasks.base import Task
from edgekd.tasks.text_generation.data import (_generate_cfg, _teacher_cfg, prompt_splits, read_answers,
                                               stage_generate, stage_teacher)
from edgekd.tasks.text_generation.distill import _distill_cfg, _resolve_loss_paths, stage_distill
from edgekd.tasks.text_generation.export import _export_cfg, stage_export
from edgekd.tasks.text_generation.natural import _natural_cfg, stage_natural
from edgekd.tasks.text_generation.search import _lm_search_cfg, stage_lm_search
from edgekd.tasks.search_common import searching
from edgekd.tasks.text_generation.hooks import (LM_CANDIDATES, QUANTIZED_TEACHER_KINDS, _profile_cfg,
                                                _quantize_cfg, _quantized_teacher_cfg, convert_job, profile_models,
                                                quantize_plan, quantized_teacher_models, report_parts)

__all__ = ["TASK", "front", "graph", "prompt_splits", "read_answers", "_resolve_loss_paths"]


def front() -> list[Stage]:
    return [
        Stage("teacher", stage_teacher, [], _teacher_cfg, reads=("recipe.teacher",)),
        Stage("generate", stage_generate, ["teacher"], _generate_cfg, parallel=True,
              reads=("recipe.teacher", "recipe.generate", "recipe.data")),
        # only when student.search sets a budget: the cut of the teacher is chosen by measuring on the target
        Stage("search", stage_lm_search, ["teacher", "generate"], _lm_search_cfg, when=searching,
              reads=("recipe.student", "recipe.teacher", "recipe.data", "recipe.generate", "recipe.quantize",
                     "recipe.distill", "target")),
        Stage("distill", stage_distill, ["teacher", "generate", "search"], _distill_cfg, parallel=True,
              reads=("recipe.teacher", "recipe.student", "recipe.distill", "recipe.data", "recipe.generate")),
        # prompts held out by source (written apart from the training prompts): scored, never chosen on
        Stage("natural", stage_natural, ["teacher", "generate", "distill"], _natural_cfg,
              # its own fields of `evaluate` only: the quantized teacher's option there is another stage's
              reads=("recipe.evaluate.natural_prompts", "recipe.evaluate.max_prompts", "recipe.evaluate.max_ratio",
                     "recipe.evaluate.max_overlap", "recipe.evaluate.natural_text",
                     "recipe.evaluate.natural_text_max_length", "recipe.data")),
        Stage("export", stage_export, ["generate", "distill"], _export_cfg,
              reads=("recipe.student", "recipe.data", "recipe.generate", "target.onnx", "target.parity")),
    ]


def graph() -> list[Stage]:
    """The whole stage graph of a text-generation recipe (the shared stages after `front`)."""
    from edgekd.tasks.stages import graph as task_graph

    return task_graph(TASK)


TASK = Task(
    name="text-generation", recipe_tasks=("text-generation",),
    summary="a causal language model: teacher answers (sequence-level KD) + top-k token KD; next-token agreement",
    front=front,
    quantize_deps=("generate", "distill", "export"),
    # runtime + providers: the family, which filters candidates; the general text and seed: the -vocab candidates
    # keep the tokens the student was trained on, the general-text draw among them
    quantize_reads=("recipe.quantize", "recipe.data", "recipe.generate", "recipe.distill.general_text",
                    "recipe.distill.seed", "target.runtime", "target.providers"),
    quantize_cfg=_quantize_cfg, quantize_plan=quantize_plan,
    profile_deps=("teacher", "generate", "distill", "quantize"),
    profile_reads=("recipe.teacher", "recipe.data", "recipe.generate", "target"),
    profile_cfg=_profile_cfg, profile_models=profile_models,
    report_stages=("teacher", "generate", "distill", "natural", "export", "quantize", "profile", "select"),
    report_parts=report_parts,
    # the family's conversion of the selected student (mobile .pte, Ascend bundle): only where the family
    # converts and ships text generation (targets.check_task refuses the others at pre-flight)
    convert_deps=("teacher", "generate", "distill", "export", "quantize", "select"),
    convert_reads=("recipe.data", "recipe.generate", "recipe.quantize", "target"), convert_job=convert_job,
    # the teacher quantized (int8-dynamic, int8-weight, int4-weight) on onnxruntime beside the student: report rows only
    quantized_teacher_kinds=QUANTIZED_TEACHER_KINDS, quantized_teacher_allowed=LM_CANDIDATES,
    quantized_teacher_deps=("teacher", "generate", "distill"),
    quantized_teacher_reads=("recipe.evaluate.quantized_teacher", "recipe.quantize.options", "recipe.data",
                             "recipe.generate", "target"),
    quantized_teacher_cfg=_quantized_teacher_cfg, quantized_teacher=quantized_teacher_models,
)
