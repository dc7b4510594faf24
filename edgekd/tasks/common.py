"""What every task graph shares: the build's data and models, and the select and report stages.

Task graphs (classification.py, text_generation.py) import from here; nothing here imports a
task graph. Each stage writes only inside its `wd` and returns a StageOutput.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from edgekd.pipeline import BuildContext, StageOutput, StageResult, stable_hash

REPORT_DIRNAME = "report"


def splits(ctx: BuildContext):
    from edgekd.data import load

    return ctx.memo("splits", lambda: load(ctx.recipe.data))


def data_fingerprint(ctx: BuildContext) -> str:
    return ctx.memo("fingerprint", lambda: splits(ctx).fingerprint())


def build_model(ref, seed: int | None = None, log: Callable[[str], None] | None = None) -> Any:
    """A fresh model for a ModelRef: zoo arch, the user's factory, an HF folder or an ONNX file
    (with `weights` loaded when the card gives them)."""
    from edgekd.zoo.sources import build_model as build_ref

    if seed is not None:  # initial weights are part of a deterministic run
        from edgekd.distill.trainer import seed_everything

        seed_everything(seed)
    return build_ref(ref, log=log)


def load_model(ref, state_path: Path, log: Callable[[str], None] | None = None):
    """The model a stage wrote (`teacher.pt`/`student.pt` state dict, or the teacher's .onnx file)."""
    import torch

    if ref.onnx:
        from edgekd.zoo.sources import OnnxModel

        return OnnxModel(state_path).eval()
    # the state file replaces the card's initial weights: build without reading them twice
    m = build_model(ref.model_copy(update={"weights": None}), log=log)
    m.load_state_dict(torch.load(state_path, weights_only=True))
    return m.eval()


def host_profile_device(ctx: BuildContext) -> tuple[str, str, Any]:
    """(measured_on, machine name, DeviceConfig) of a model profiled on this host's CPU: the target
    family's answer (the device on cpu; elsewhere the host stands in, with this host's figures)."""
    from edgekd.targets import family

    return family(ctx.target).host_cpu_profiled(ctx.target)


def checkpoint_path(ctx: BuildContext, stage: str, key_material: Any) -> Path:
    d = ctx.out / ".checkpoints"
    d.mkdir(exist_ok=True)
    return d / f"{stage}-{stable_hash(key_material)[:16]}.pt"


# --------------------------------------------------------------------------- select


def select_cfg(ctx: BuildContext) -> dict:
    q = ctx.recipe.quantize
    return {"budget": q.accuracy_budget, "objective": q.objective, "strict": q.strict or bool(ctx.options.get("strict")),
            "max_latency_growth": q.max_latency_growth}


def stage_select(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    from edgekd.quantize.select import select

    prof = inputs["profile"].metrics["models"]
    cands = []
    for c in inputs["quantize"].metrics["candidates"]:
        p = prof.get(f"student/{c['variant']}")
        # `repeats`: each interleaved repeat's p50, whose spread is the noise a win must exceed
        cands.append({**c, "latency_ms": p["latency_ms"] if p else None, "repeats": p.get("repeats") if p else None})
    cfg = select_cfg(ctx)
    sel = select(cands, cfg["budget"], cfg["objective"], cfg["strict"], cfg["max_latency_growth"])
    for w in sel.get("warnings", []):
        ctx.log(f"[yellow]warning:[/] {w}")
    (wd / "selected.json").write_text(json.dumps(sel, indent=2, default=str))
    return StageOutput({"selected": "selected.json"}, sel)



# --------------------------------------------------------------------------- report


def report_stage(builder: Callable[[Path, dict], dict[str, Any]]):
    """The report stage of a task graph whose report.json is assembled by `builder(build_dir, run)`
    from the stage result files alone."""

    def stage_report(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
        from edgekd.pipeline import load_run
        from edgekd.report import write_all

        report = builder(ctx.out, load_run(ctx.out))
        files = write_all(report, wd)
        return StageOutput({p.name: os.path.relpath(p, wd) for p in files},
                           {"selected": report["selected"], "comparison": report["comparison"]})

    return stage_report


def report_cfg(ctx: BuildContext) -> dict:
    import datetime as _dt

    # The report is rebuilt every run (cheap) so it reflects the current stage files.
    return {"created": _dt.datetime.now().isoformat()}
