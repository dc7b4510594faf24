"""Which shipped mobile artifact to recommend: one rule for classifier bundles and language-model programs."""
from __future__ import annotations

from typing import Any


def select_artifact(rows: list[dict[str, Any]], reference_val_accuracy: float | None,
                    budget_points: float, reference_accuracy: float | None = None) -> dict[str, Any]:
    """The shipped artifact to recommend: within `budget_points` of the FP32 student's VALIDATION accuracy (each
    artifact's own validation accuracy, through its own runtime), then the lowest host-proxy p50 (the only
    latencies here measured on one machine). Test accuracies are reported, never read here: `reference_accuracy`,
    the FP32 student's test accuracy, is passed through to the record for the report."""
    from edgekd.quantize.budget import Budget

    budget = Budget(budget_points)
    host = [r for r in rows if r["measured_on"] == "host" and r.get("val_accuracy") is not None]
    ref = reference_val_accuracy if reference_val_accuracy is not None \
        else max((r["val_accuracy"] for r in host), default=None)
    status = {}
    ok = []
    for r in host:
        within = ref is None or budget.within(ref, r["val_accuracy"])
        status[r["variant"]] = "kept" if within else "over-budget"
        if within:
            ok.append(r)
    best = min(ok, key=lambda r: r["latency_ms"]["p50"]) if ok else None
    if best:
        status[best["variant"]] = "selected"
    return {"selected": f"student/{best['variant']}" if best else None, "status": status,
            "by": "lowest host-proxy p50 within the accuracy budget of the FP32 student on validation data",
            "reference_val_accuracy": ref, "reference_accuracy": reference_accuracy, "budget_points": budget_points}
