"""Selection rules on synthetic measurements: budget, speed, ties, failures, size objective, strict."""
from __future__ import annotations

import copy

import pytest

from edgekd.errors import ConfigError, StageError
from edgekd.quantize import select


def c(variant: str, val: float | None = 0.90, p50: float | None = 10.0, size: int | None = 1000,
      error: str | None = None, test: float | None = None) -> dict:
    return {"variant": variant, "val_accuracy": val, "accuracy": val if test is None else test,
            "latency_ms": None if p50 is None else {"p50": p50, "p90": p50 * 1.1, "n": 100},
            "size_bytes": size, "error": error}


def statuses(res: dict) -> dict[str, str]:
    return {x["variant"]: x["status"] for x in res["candidates"]}


def test_fastest_within_budget_wins():
    cands = [c("fp32", 0.900, 10.0, 4000), c("fp16", 0.900, 12.0, 2000), c("int8-dynamic", 0.897, 6.0, 1000),
             c("int8-qdq", 0.880, 4.0, 1000), c("int4-weight", 0.899, 8.0, 600)]
    before = copy.deepcopy(cands)
    res = select(cands, budget_points=0.5, objective="latency", strict=False)
    assert res["selected"] == "int8-dynamic"
    assert statuses(res) == {"fp32": "kept", "fp16": "slower-than-fp32", "int8-dynamic": "selected",
                             "int8-qdq": "over-budget", "int4-weight": "kept"}
    assert res["warnings"] == [] and cands == before  # the caller's dicts are not mutated
    assert next(x for x in res["candidates"] if x["variant"] == "fp32")["reference"] is True


def test_budget_edge_and_val_not_test_accuracy():
    # Exactly at the budget counts as within; the selector reads val_accuracy, not test accuracy.
    res = select([c("fp32", 0.90, 10), c("a", 0.895, 5, test=0.10), c("b", 0.8949, 4, test=0.99)], 0.5)
    assert statuses(res) == {"fp32": "kept", "a": "selected", "b": "over-budget"}


def test_equal_latency_is_not_faster():
    res = select([c("fp32", p50=10.0), c("int8-qdq", p50=10.0)], 1.0)
    assert res["selected"] == "fp32" and statuses(res)["int8-qdq"] == "slower-than-fp32"
    assert res["warnings"]


def test_ties_break_on_size_then_name():
    res = select([c("fp32", p50=10), c("b", p50=5, size=900), c("a", p50=5, size=900), c("z", p50=5, size=800)], 1)
    assert res["selected"] == "z"
    res = select([c("fp32", p50=10), c("b", p50=5, size=900), c("a", p50=5, size=900)], 1)
    assert res["selected"] == "a" and statuses(res)["b"] == "kept"


def test_all_over_budget_keeps_fp32_with_warning():
    res = select([c("fp32", 0.90, 10), c("int8-qdq", 0.80, 5), c("int8-dynamic", 0.85, 6)], 0.5)
    assert res["selected"] == "fp32" and statuses(res)["fp32"] == "selected"
    assert len(res["warnings"]) == 1
    w = res["warnings"][0]
    assert "no quantized candidate met the budget" in w and "kept fp32" in w and "int8-qdq: over-budget" in w


def test_strict_raises_when_nothing_beats_fp32():
    with pytest.raises(StageError) as e:
        select([c("fp32", 0.90, 10), c("int8-qdq", 0.80, 5)], 0.5, strict=True)
    assert e.value.exit_code == 4 and "kept fp32" in str(e.value)
    # strict does not fire when a candidate fits
    assert select([c("fp32", 0.90, 10), c("int8-qdq", 0.90, 5)], 0.5, strict=True)["selected"] == "int8-qdq"


def test_fp32_alone_is_selected_without_a_warning_but_strict_still_refuses():
    # e.g. an Ascend build: its card lists fp32 alone, the INT8 kinds are not built there
    res = select([c("fp32", 0.90, 10)], 0.5)
    assert res["selected"] == "fp32" and statuses(res) == {"fp32": "selected"} and res["warnings"] == []
    with pytest.raises(StageError, match="no quantized candidate was made"):
        select([c("fp32", 0.90, 10)], 0.5, strict=True)


def test_failed_candidates_are_marked_and_skipped():
    res = select([c("fp32", p50=10), c("int4-weight", error="not applicable: no MatMul"),
                  c("int8-qdq", p50=None), c("int8-dynamic", p50=7)], 1)
    st = statuses(res)
    assert st["int4-weight"] == "failed: not applicable: no MatMul"
    assert st["int8-qdq"] == "failed: no latency measured"
    assert res["selected"] == "int8-dynamic"


def test_all_failed_exit_4_with_reasons():
    with pytest.raises(StageError) as e:
        select([c("fp32", error="export parity 0.3 > 1e-4"), c("int8-qdq", error="ORT: bad node")], 1)
    assert e.value.exit_code == 4
    assert "fp32: export parity 0.3 > 1e-4" in str(e.value) and "int8-qdq: ORT: bad node" in str(e.value)


def test_fp32_failed_alone_is_a_stage_error():
    # Without the reference there is no budget and no speedup to judge against.
    with pytest.raises(StageError, match="fp32 reference"):
        select([c("fp32", p50=None), c("int8-qdq", p50=5)], 1)


def test_size_objective():
    cands = [c("fp32", 0.90, 10, 4000), c("fp16", 0.90, 12, 2000), c("int8-qdq", 0.90, 5, 1100),
             c("int4-weight", 0.899, 9, 600), c("big", 0.90, 1, 4000)]
    res = select(cands, 0.5, objective="size")
    assert res["selected"] == "int4-weight"
    st = statuses(res)
    assert st["big"] == "larger-than-fp32" and st["fp16"] == "kept" and st["int8-qdq"] == "kept"
    # size objective does not need latency
    res = select([c("fp32", size=4000, p50=None), c("int8-qdq", size=1000, p50=None)], 0.5, objective="size")
    assert res["selected"] == "int8-qdq"


def test_size_objective_with_a_bound_on_latency():
    """fashion-cnn's case: dynamic INT8 is the smallest but 7.5x slower than fp32; QDQ a little larger and 12%
    slower. With max_latency_growth 0.25 the QDQ graph ships; without a bound the smallest does."""
    cands = [c("fp32", 0.9278, 0.0418, 136075), c("int8-dynamic", 0.9270, 0.3124, 41768),
             c("int8-qdq", 0.9272, 0.0471, 45582)]
    res = select(cands, 0.5, objective="size", max_latency_growth=0.25)
    assert res["selected"] == "int8-qdq" and res["max_latency_growth"] == 0.25
    st = statuses(res)
    assert st == {"fp32": "kept", "int8-dynamic": "slower-than-fp32", "int8-qdq": "selected"}
    slow = next(x for x in res["candidates"] if x["variant"] == "int8-dynamic")
    assert slow["p50_over_fp32"] == pytest.approx(0.3124 / 0.0418)
    assert select(cands, 0.5, objective="size")["selected"] == "int8-dynamic"
    # the bound is inclusive, and 0 means "no slower than fp32"
    assert select(cands, 0.5, objective="size", max_latency_growth=0.0471 / 0.0418 - 1)["selected"] == "int8-qdq"
    assert select(cands, 0.5, objective="size", max_latency_growth=0.0)["selected"] == "fp32"
    # a bound needs latencies: a candidate without one cannot be judged against it
    res = select([c("fp32"), c("int8-qdq", size=10, p50=None)], 0.5, objective="size", max_latency_growth=0.25)
    assert res["selected"] == "fp32" and statuses(res)["int8-qdq"].startswith("failed: no latency measured")
    # latency objective: the bound has nothing to add (a selected candidate is faster than fp32)
    assert select(cands, 0.5, objective="latency", max_latency_growth=0.25)["max_latency_growth"] is None
    with pytest.raises(ConfigError, match="max_latency_growth"):
        select(cands, 0.5, objective="size", max_latency_growth=-0.1)


def test_bad_arguments():
    with pytest.raises(ConfigError):
        select([c("fp32")], 0.5, objective="speed")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        select([c("fp32")], -1)


def r(variant: str, p50: float, repeats: list[float], size: int = 1000, val: float = 0.90) -> dict:
    """A candidate as the profile stage measures it: the median repeat's p50 and every repeat's p50."""
    return {**c(variant, val, p50, size), "repeats": repeats}


def test_candidate_inside_fp32_noise_is_not_selected():
    # int8 measured 2% faster, but fp32's own repeats vary by 5%: that is no evidence of speed.
    fp32 = r("fp32", 10.0, [9.8, 10.0, 10.3], size=4000)
    res = select([fp32, r("int8-dynamic", 9.8, [9.7, 9.8, 9.9])], 0.5)
    assert res["selected"] == "fp32" and statuses(res)["int8-dynamic"] == "within-noise-of-fp32"
    assert next(x for x in res["candidates"] if x["variant"] == "int8-dynamic")["noise_ms"] == pytest.approx(0.5)
    # The same tie measured the other way round (noise moved int8 the other side): same choice.
    res2 = select([r("fp32", 9.9, [9.7, 9.9, 10.2], size=4000), r("int8-dynamic", 9.75, [9.6, 9.75, 9.9])], 0.5)
    assert res2["selected"] == "fp32"
    # Faster by more than both spreads: selected.
    res3 = select([fp32, r("int8-dynamic", 6.0, [5.9, 6.0, 6.2])], 0.5)
    assert res3["selected"] == "int8-dynamic"


def test_two_candidates_within_each_others_noise_choose_deterministically():
    fp32 = r("fp32", 10.0, [9.9, 10.0, 10.1], size=4000)
    for a, b in ((6.0, 5.9), (5.9, 6.0), (5.95, 5.95)):  # whichever the noise made faster this time
        res = select([fp32, r("int8-qdq", a, [a - 0.1, a, a + 0.1], size=1100),
                      r("int8-dynamic", b, [b - 0.1, b, b + 0.1], size=1000)], 0.5)
        assert res["selected"] == "int8-dynamic", (a, b)  # the tie breaks on size, not on the noisy p50
        assert statuses(res)["int8-qdq"] == "kept"
    # Clearly faster than the other (beyond both spreads): speed wins over size.
    res = select([fp32, r("int8-qdq", 4.0, [3.9, 4.0, 4.1], size=1100), r("int8-dynamic", 6.0, [5.9, 6.0, 6.1])], 0.5)
    assert res["selected"] == "int8-qdq"


def test_a_device_budget_limits_what_may_be_selected():
    """student.search's latency/size budget: only fitting candidates are selected; when fp32 misses the size
    budget a smaller quantized candidate within the accuracy budget wins even if it is not faster."""
    from edgekd.quantize.select import select

    def cand(variant, acc, p50, size):
        return {"variant": variant, "val_accuracy": acc, "latency_ms": {"p50": p50}, "size_bytes": size, "error": None}

    cands = [cand("fp32", 0.90, 1.0, 20_000), cand("int8-dynamic", 0.899, 1.3, 6_000), cand("int8-qdq", 0.80, 0.5, 6_000)]
    plain = select([dict(c) for c in cands], 0.5)
    assert plain["selected"] == "fp32"  # int8-dynamic is slower, int8-qdq over the accuracy budget
    sized = select([dict(c) for c in cands], 0.5, device_budget={"size_bytes": 16 * 1024})
    assert sized["selected"] == "int8-dynamic" and not sized["warnings"]
    st = {c["variant"]: c["status"] for c in sized["candidates"]}
    assert st["int8-qdq"] == "over-budget"
    # a faster candidate that misses the latency budget is not selected; fp32 fits and stays
    fast = [cand("fp32", 0.90, 1.0, 20_000), cand("int8-dynamic", 0.90, 0.6, 30_000)]
    res = select([dict(c) for c in fast], 0.5, device_budget={"size_bytes": 25_000})
    assert res["selected"] == "fp32"
    assert {c["variant"]: c["status"] for c in res["candidates"]}["int8-dynamic"] == "misses-device-budget"
    # nothing fits: the usual rule picks, and says so
    res = select([dict(c) for c in cands], 0.5, device_budget={"latency_ms": 0.1})
    assert res["selected"] == "fp32" and "device budget" in res["warnings"][0]
