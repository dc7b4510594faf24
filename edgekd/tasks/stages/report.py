"""The report stage, one assembler for every task: report.json from the stage result files alone.

The task gives its model rows, candidate rows and the sections only it has (ReportParts); the target's
shipped artifacts (the convert stage's rows), the selected artifact, the teacher-over-student comparison
between figures measured in the same place, the selection rule and the notes are assembled here.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from edgekd.errors import UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.stages import task_of

REPORT_DIRNAME = "report"


def noise_note(models: list[dict]) -> str | None:
    """The report's note on rows whose profile repeats (a classifier's interleaved processes, a language model's
    passes over its prompts) spread by more than 5%, each named by role and variant (a teacher and a student row
    may share a variant name)."""
    noisy = [f"{m['role']}/{m['variant']}" for m in models if m.get("noisy")]
    return f"Latency spread across repeats exceeded 5% for: {', '.join(noisy)}." if noisy else None


def report_cfg(ctx: BuildContext) -> dict:
    # The report is rebuilt every run (cheap) so it reflects the current stage files.
    return {"created": _dt.datetime.now().isoformat()}


def stage_report(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    from edgekd.pipeline import load_run
    from edgekd.report import write_all

    report = assemble(ctx.out, load_run(ctx.out), task_of(ctx))
    files = write_all(report, wd)
    return StageOutput({p.name: os.path.relpath(p, wd) for p in files},
                       {"selected": report["selected"], "comparison": report["comparison"],
                        "budget_met": (report.get("search") or {}).get("final", {}).get("met")})


def _results(build_dir: Path, names: tuple[str, ...]) -> dict[str, dict]:
    from edgekd.fsio import read_result

    res = {n: read_result(build_dir / n) for n in names}
    missing = [n for n, r in res.items() if r is None]
    if missing:
        raise UserError(f"{build_dir} has no finished result for stage(s): {', '.join(missing)}",
                        hint="run `edgekd build` (or the missing stage) on this folder first")
    return res  # type: ignore[return-value]


def assemble(build_dir: Path, run: dict, task) -> dict[str, Any]:
    """report.json of a build folder of `task`, from its stage result files alone."""
    from edgekd import __version__
    from edgekd.fsio import read_result
    from edgekd.report.build import (compare_same_kind, energy_note, environment, measurements, not_built_note,
                                     not_built_rows, ratio, selection_rule, weak_teacher_note)
    from edgekd.report.schema import REPORT_SCHEMA_VERSION

    res = _results(build_dir, task.report_stages)  # the convert stage is optional: read below when present
    sel, prof, quant = res["select"]["metrics"], res["profile"]["metrics"], res["quantize"]["metrics"]
    parts = task.report_parts(build_dir, res, run)
    models = list(parts.models)
    cm = ((read_result(build_dir / "convert") or {}).get("metrics")) or {}
    for row in cm.get("models") or []:  # the artifacts the target ships (mobile .pte/.ort, the Ascend bundle)
        models.append({**row, "path": os.path.join("convert", row["path"])})
    key = lambda m: f"{m['role']}/{m['variant']}"  # noqa: E731
    onnx_selected = f"student/{sel['selected']}"
    selected_key = cm.get("selected_artifact") if cm.get("selected_artifact") in {key(m) for m in models} \
        else onnx_selected
    comparison = compare_same_kind(models, selected_key, onnx_selected)
    teacher = next(m for m in models if key(m) == comparison["teacher"])
    student = next(m for m in models if key(m) == comparison["student"])
    same_rt = next((m for m in models if key(m) == parts.teacher_same_runtime), None)
    # the teacher timed on the student's own runtime: the like-with-like ratio beside the headline's
    comparison["teacher_onnx_speedup_p50"] = (
        ratio(same_rt["latency_ms"]["p50"], student["latency_ms"]["p50"])
        if same_rt is not None and same_rt.get("latency_ms") and student.get("latency_ms")
        and same_rt["measured_on"] == comparison["basis"] else None)
    if comparison["teacher_onnx_speedup_p50"] is not None:
        comparison["teacher_same_runtime"] = key(same_rt)  # the headline names the row the ratio is formed from
    if teacher.get("ttft_ms") or student.get("ttft_ms"):  # per-token figures of a generating model
        comparison["ttft_speedup_p50"] = ratio((teacher.get("ttft_ms") or {}).get("p50"),
                                                (student.get("ttft_ms") or {}).get("p50"))
        comparison["tokens_per_s_ratio"] = ratio(student.get("tokens_per_s"), teacher.get("tokens_per_s"))
    if parts.control is not None:
        comparison["kd_gain_points"] = parts.control["kd_gain_points"]
    # the alternative to distilling: the teacher quantized (quantized_teacher stage; mobile: the teacher's .pte), on
    # the selected ONNX candidate's runtime, and on the shipped artifact's where that differs and has such rows
    from edgekd.report.build import distill_vs_quantize

    for name, at in (("distill_vs_quantize", onnx_selected), ("distill_vs_quantize_target", selected_key)):
        dq = distill_vs_quantize(models, at) if name == "distill_vs_quantize" or at != onnx_selected else None
        if dq is not None:
            comparison[name] = dq
    not_built = quant.get("not_built") or []
    notes = [energy_note(teacher), *parts.notes]
    weak = weak_teacher_note(parts.control, next((m for m in models if key(m) == "teacher/fp32-torch"), teacher))
    if weak:
        notes.append(weak)
    noisy = noise_note(models)
    if noisy:
        notes.append(noisy)
    notes.extend(sel.get("warnings", []))
    if not_built:
        notes.append(not_built_note(run.get("target_name"), not_built))
    sm = ((read_result(build_dir / "search") or {}).get("metrics")) or {}
    sections = dict(parts.sections)
    if sm.get("winner"):  # a budget sized the student: the search, and the budget checked on the shipped artifact
        from edgekd.report.build import search_note, search_section

        sections["search"] = search_section(sm, student)
        miss = search_note(sections["search"])
        if miss:
            notes.insert(0, miss)
    return {
        "schema_version": REPORT_SCHEMA_VERSION, "recipe": run.get("recipe_name"), "target": run.get("target_name"),
        "task": run.get("task") or task.recipe_tasks[0],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "edgekd_version": __version__,
        "environment": parts.environment or environment(prof["settings"], prof),
        "quick": run.get("quick", False), "models": models, "selected": selected_key, "comparison": comparison,
        "selected_onnx_candidate": onnx_selected, "artifact_selection": cm.get("artifact_selection"),
        "measurements": measurements(models, cm.get("where")),
        "candidates": parts.candidates + not_built_rows(not_built), "selection": selection_rule(sel),
        "profile_settings": prof["settings"], **sections,
        "training": parts.training, "parity": parts.parity, "notes": notes,
    }
