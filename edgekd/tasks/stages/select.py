"""The select stage: the fastest (or smallest) candidate within the accuracy budget, on validation figures."""
from __future__ import annotations

import json
from pathlib import Path

from edgekd.pipeline import BuildContext, StageOutput, StageResult


def select_cfg(ctx: BuildContext) -> dict:
    q = ctx.recipe.quantize
    cfg = {"budget": q.accuracy_budget, "objective": q.objective, "strict": q.strict or bool(ctx.options.get("strict")),
           "max_latency_growth": q.max_latency_growth}
    device = device_budget(ctx)
    if device:  # only with a student.search budget: other builds keep their key
        cfg["device_budget"] = device
    return cfg


def device_budget(ctx: BuildContext) -> dict[str, float] | None:
    """The student's latency (ms, p50) and size (bytes) budget from the card's student.search, if any."""
    search = getattr(ctx.recipe.student, "search", None)
    if search is None:
        return None
    out = {}
    if search.latency_ms is not None:
        out["latency_ms"] = float(search.latency_ms)
    if search.size_kib is not None:
        out["size_bytes"] = float(search.size_kib) * 1024
    return out or None


def stage_select(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    from edgekd.quantize.select import select

    prof = inputs["profile"].metrics["models"]
    cands = []
    for c in inputs["quantize"].metrics["candidates"]:
        p = prof.get(f"student/{c['variant']}")
        # `repeats`: each repeat's p50 (interleaved processes; an LM's passes over its prompts), whose spread is the
        # noise a win must exceed
        cands.append({**c, "latency_ms": p["latency_ms"] if p else None, "repeats": p.get("repeats") if p else None})
    cfg = select_cfg(ctx)
    sel = select(cands, cfg["budget"], cfg["objective"], cfg["strict"], cfg["max_latency_growth"],
                 device_budget=cfg.get("device_budget"))
    for w in sel.get("warnings", []):
        ctx.log(f"[yellow]warning:[/] {w}")
    (wd / "selected.json").write_text(json.dumps(sel, indent=2, default=str))
    return StageOutput({"selected": "selected.json"}, sel)
