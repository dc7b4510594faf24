"""The select stage: the fastest (or smallest) candidate within the accuracy budget, on validation figures."""
from __future__ import annotations

import json
from pathlib import Path

from edgekd.pipeline import BuildContext, StageOutput, StageResult


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
