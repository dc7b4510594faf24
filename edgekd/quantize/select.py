"""Pick the candidate to ship from measured numbers: the fastest (or smallest) one that is
within the accuracy budget of the FP32 student and actually beats FP32.

"Beats" means by more than the noise the profiler measured: each model is timed in several
interleaved repeats (profile/runner.py; a language model: passes over the profile prompts in its own
process, llm/bench.py), and the spread of their p50s (max - min, in ms) is how far two identical
builds can differ. A candidate faster than FP32 by less than that spread (the
larger of the two models' spreads) is `within-noise-of-fp32` and FP32 is kept; candidates
within each other's noise are a tie, broken on size and then name, never on the noisy p50, so the
same build on a quiet machine selects the same variant.

With `objective: size`, `max_latency_growth` (a fraction) bounds what size may cost in time: a
candidate whose p50 exceeds FP32's by more than that is `slower-than-fp32` and not selected, so a
smaller INT8 graph that runs several times slower than FP32 (dynamic INT8 of a tiny CNN on a CPU
without VNNI) does not ship in place of one a little larger and nearly as fast.

Pure function over measurements, so every rule is testable without a model: the profiler fills
`latency_ms`, the accuracy stage fills `val_accuracy` (used here) and `accuracy` (test, reported).
"""
from __future__ import annotations

from typing import Any, Literal

from edgekd.errors import ConfigError, StageError
from edgekd.quantize.budget import Budget

REFERENCE = "fp32"
EPS = 1e-9  # float slack on latency comparisons (the accuracy budget's own slack lives in Budget)

SELECTED = "selected"
KEPT = "kept"
OVER_BUDGET = "over-budget"
SLOWER = "slower-than-fp32"
WITHIN_NOISE = "within-noise-of-fp32"
LARGER = "larger-than-fp32"
MISSES_DEVICE_BUDGET = "misses-device-budget"  # within the accuracy budget, but over the card's latency/size budget


def within_budget(ref_accuracy: float, accuracy: float, budget_points: float) -> bool:
    """Kept for callers of the old name: `Budget(budget_points).within(ref_accuracy, accuracy)`."""
    return Budget(budget_points).within(ref_accuracy, accuracy)


def _p50(c: dict[str, Any]) -> float | None:
    lat = c.get("latency_ms")
    if not isinstance(lat, dict) or lat.get("p50") is None:
        return None
    return float(lat["p50"])


def _span_ms(c: dict[str, Any]) -> float:
    """Spread of the interleaved repeats' p50s (ms); 0 when fewer than two repeats were measured."""
    reps = [float(r) for r in (c.get("repeats") or []) if r is not None]
    return max(reps) - min(reps) if len(reps) >= 2 else 0.0


def _noise_ms(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(_span_ms(a), _span_ms(b))


def _metric(c: dict[str, Any], objective: str) -> float | None:
    if objective == "latency":
        return _p50(c)
    return None if c.get("size_bytes") is None else float(c["size_bytes"])


def _reason_missing(c: dict[str, Any], objective: str, needs_latency: bool = False) -> str | None:
    """Why a non-failed candidate cannot be ranked (a missing measurement is a failure, not a pass)."""
    if c.get("val_accuracy") is None:
        return "no validation accuracy measured"
    if _metric(c, objective) is None:
        return "no latency measured" if objective == "latency" else "no size measured"
    if needs_latency and _p50(c) is None:
        return "no latency measured (quantize.max_latency_growth needs one)"
    return None


def _judge(out: list[dict[str, Any]], ref: dict[str, Any], budget: Budget, objective: str,
           growth: float | None) -> list[dict[str, Any]]:
    """Give each measured candidate other than fp32 its status against the fp32 reference (budget on validation
    accuracy, then the objective, the latency bound and the noise); return those still in the running."""
    ref_acc = float(ref["val_accuracy"])
    ref_metric = _metric(ref, objective)
    ok: list[dict[str, Any]] = []
    for c in out:
        if c is ref or c["status"] is not None:
            continue
        if not budget.within(ref_acc, float(c["val_accuracy"])):
            c["status"] = OVER_BUDGET
        elif _metric(c, objective) >= ref_metric:  # type: ignore[operator]  # both checked non-None above
            c["status"] = SLOWER if objective == "latency" else LARGER
        elif growth is not None and _p50(c) > _p50(ref) * (1 + growth) + EPS:  # type: ignore[operator]
            c["status"] = SLOWER
            c["p50_over_fp32"] = _p50(c) / _p50(ref)  # type: ignore[operator]
        elif objective == "latency" and ref_metric - _metric(c, objective) <= _noise_ms(c, ref):  # type: ignore[operator]
            c["status"] = WITHIN_NOISE
            c["noise_ms"] = _noise_ms(c, ref)
        else:
            ok.append(c)
    return ok


def _fits(c: dict[str, Any], device_budget: dict[str, float] | None) -> bool:
    """Within the student's latency (p50, ms) and size (bytes) budget; a missing figure does not fit."""
    if not device_budget:
        return True
    size, p50 = c.get("size_bytes"), _p50(c)
    if device_budget.get("size_bytes") is not None and (size is None or size > device_budget["size_bytes"]):
        return False
    if device_budget.get("latency_ms") is not None and (p50 is None or p50 > device_budget["latency_ms"] + EPS):
        return False
    return True


def _within_device_budget(out: list[dict[str, Any]], ok: list[dict[str, Any]], ref: dict[str, Any], budget: Budget,
                          device_budget: dict[str, float], warnings: list[str]) -> list[dict[str, Any]]:
    """The candidates still in the running once the student's latency/size budget is applied (see `select`)."""
    fitting = [c for c in ok if _fits(c, device_budget)]
    if fitting or _fits(ref, device_budget):
        for c in ok:
            if c not in fitting:
                c["status"] = MISSES_DEVICE_BUDGET
        return fitting  # empty: fp32 fits and is selected
    # fp32 itself misses the budget: a candidate within the accuracy budget that fits will do, faster or not
    ref_acc = float(ref["val_accuracy"])
    alt = [c for c in out if c is not ref and c["status"] in (SLOWER, LARGER, WITHIN_NOISE)
           and budget.within(ref_acc, float(c["val_accuracy"])) and _fits(c, device_budget)]
    if alt:
        for c in ok:
            c["status"] = MISSES_DEVICE_BUDGET
        for c in alt:
            c["status"] = None
        return alt
    warnings.append(f"no candidate within the accuracy budget meets the student's device budget {device_budget}: "
                    "selected by the usual rule; the report's final budget check shows the miss")
    return ok


def select(candidates: list[dict[str, Any]], budget_points: float | Budget,
           objective: Literal["latency", "size"] = "latency", strict: bool = False,
           max_latency_growth: float | None = None, device_budget: dict[str, float] | None = None) -> dict[str, Any]:
    """Give every candidate a status and pick one.

    Statuses: `selected`, `kept` (valid but not the best; fp32 when not selected),
    `over-budget`, `slower-than-fp32` / `larger-than-fp32`, `within-noise-of-fp32` (faster by less than the
    repeats' spread, given as `repeats`: the p50 of each interleaved repeat, ms), `failed: <reason>`.
    `budget_points`: the recipe's budget in points of validation accuracy, or a Budget (another metric).
    `max_latency_growth` (objective size only): the most a candidate's p50 may exceed FP32's, as a fraction.
    `device_budget` ({"latency_ms", "size_bytes"}, the card's student.search budget): only candidates within it
    may be selected (`misses-device-budget` otherwise); when fp32 misses it, a quantized candidate within the
    accuracy budget that fits is chosen even if it is not faster than fp32; when none fits, the usual rule
    picks and a warning says so (the report's final budget check flags the miss).
    Returns {selected, objective, budget_points, max_latency_growth, reference_val_accuracy, candidates, warnings}.
    Raises StageError (exit 4) when every candidate failed, or, with `strict`, when no quantized
    candidate beats FP32 within budget.
    """
    if objective not in ("latency", "size"):
        raise ConfigError(f"unknown quantize objective '{objective}'", hint="valid: latency, size")
    budget = budget_points if isinstance(budget_points, Budget) else Budget(budget_points)
    budget_points = budget.points
    if max_latency_growth is not None and max_latency_growth < 0:
        raise ConfigError(f"max_latency_growth must be >= 0 (a fraction), got {max_latency_growth}", hint="e.g. 0.25")
    growth = max_latency_growth if objective == "size" else None  # latency: a selected candidate is faster anyway
    names = [c.get("variant") for c in candidates]
    if len(set(names)) != len(names):
        raise StageError(f"duplicate candidate variants: {names}", hint="each candidate name may appear once")

    out = [dict(c) for c in candidates]
    for c in out:
        if c.get("error"):
            c["status"] = f"failed: {c['error']}"
        elif (why := _reason_missing(c, objective, growth is not None)) is not None:
            c["status"] = f"failed: {why}"
        else:
            c["status"] = None

    if all(c["status"] is not None for c in out):
        reasons = "; ".join(f"{c.get('variant')}: {c['status'][len('failed: '):]}" for c in out) or "no candidates"
        raise StageError(f"every quantization candidate failed ({reasons})",
                         hint="see each candidate's error in the quantize stage result; fp32 must at least export")

    ref = next((c for c in out if c.get("variant") == REFERENCE), None)
    warnings: list[str] = []
    if ref is None or ref["status"] is not None:
        # Without a valid FP32 reference there is nothing to measure a budget or a speedup against.
        why = "missing" if ref is None else ref["status"]
        raise StageError(f"the fp32 reference candidate is {why}; cannot judge the others against it",
                         hint="the fp32 candidate must be made and measured before selection")

    ref["reference"] = True
    ref_acc = float(ref["val_accuracy"])
    ok = _judge(out, ref, budget, objective, growth)
    if device_budget:
        ok = _within_device_budget(out, ok, ref, budget, device_budget, warnings)

    def key(c: dict[str, Any]) -> tuple:
        size = float(c["size_bytes"]) if c.get("size_bytes") is not None else float("inf")
        p50 = _p50(c) if _p50(c) is not None else float("inf")
        primary, secondary = (p50, size) if objective == "latency" else (size, p50)
        return (primary, secondary, str(c.get("variant")))

    if ok:
        best = min(ok, key=key)
        if objective == "latency":
            # Candidates within the fastest one's noise are equally fast as far as we can tell.
            tied = [c for c in ok if _p50(c) - _p50(best) <= _noise_ms(c, best)]  # type: ignore[operator]
            best = min(tied, key=lambda c: (float(c["size_bytes"]) if c.get("size_bytes") is not None
                                            else float("inf"), str(c.get("variant"))))
        best["status"] = SELECTED
        for c in ok:
            if c is not best:
                c["status"] = KEPT
        ref["status"] = KEPT  # fp32 is always kept: it is the reference every report compares against
        chosen = best["variant"]
    else:
        tried = [c for c in out if c is not ref]
        detail = ", ".join(f"{c.get('variant')}: {c['status']}" for c in tried)
        msg = (f"no quantized candidate met the budget of {budget_points:g} points while beating fp32 on "
               f"{objective} ({detail}); kept fp32" if tried else
               "no quantized candidate was made (the candidates are fp32 alone); kept fp32")
        if strict:
            raise StageError(msg, hint="raise quantize.accuracy_budget, add candidates, or unset quantize.strict")
        if tried:  # fp32 alone (e.g. the Ascend cards' list) was a choice, not a shortfall: nothing to warn about
            warnings.append(msg)
        ref["status"] = SELECTED
        chosen = REFERENCE
    return {"selected": chosen, "objective": objective, "budget_points": budget_points,
            "max_latency_growth": growth, "reference_val_accuracy": ref_acc, "candidates": out, "warnings": warnings}
