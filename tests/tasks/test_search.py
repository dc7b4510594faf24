"""The student search (issue #29): budget parsing, the space a zoo student implies, the report section."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.cards import load_recipe, load_target
from edgekd.config import parse_latency_ms, parse_size_kib
from edgekd.errors import ConfigError


@pytest.mark.parametrize("text, ms", [("0.5ms", 0.5), ("500us", 0.5), ("500µs", 0.5), ("0.002s", 2.0), (3, 3.0),
                                      ("1.5 ms", 1.5)])
def test_latency_units(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text, kib", [("64KiB", 64.0), ("1MiB", 1024.0), ("65536B", 64.0), ("64kB", 62.5), (8, 8.0)])
def test_size_units(text, kib):
    assert parse_size_kib(text) == pytest.approx(kib)


@pytest.mark.parametrize("key, bad", [("latency_ms", "fast"), ("latency_ms", "5 parsecs"), ("latency_ms", 0),
                                      ("size_kib", "-3KiB"), ("size_kib", "64 furlongs")])
def test_bad_budget_is_a_config_error(key, bad):
    with pytest.raises(ConfigError) as e:
        load_recipe("digits-mlp", {f"student.search.{key}": bad})
    assert e.value.exit_code == 2


def test_card_without_search_keeps_its_dump():
    # no search: the student's dump (and so every cache key) is what it was before the field existed
    assert "search" not in load_recipe("digits-mlp", {}).student.model_dump()


def test_zoo_space_of_small_cnn():
    from edgekd.tasks.classification.search import search_space

    r = load_recipe("fashion-cnn", {"student.search.latency_ms": "1ms", "student.search.space.width_mult": [0.5, 1.0],
                                    "student.search.space.depth_mult": [0.67, 1.0, 1.34]})
    cands, where = search_space(r.student)
    widths = [c["widths"] for c in cands]
    assert widths == [[8, 16], [16, 32], [8, 16, 48], [16, 32, 96], [8, 16, 48, 48], [16, 32, 96, 96]]
    assert all(c["hidden"] == 0 for c in cands)  # the card's other kwargs kept
    assert "small_cnn" in where and "student.search.space" in where


def test_factory_kwargs_ranges_and_missing_space():
    from edgekd.tasks.classification.search import search_space

    r = load_recipe("digits-mlp", {"student.search.size_kib": 8, "student.search.kwargs.hidden": [[8], [16, 16]],
                                   "student.search.kwargs.dropout": [0.0, 0.1]})
    cands, where = search_space(r.student)
    assert len(cands) == 4 and {tuple(c["hidden"]) for c in cands} == {(8,), (16, 16)}
    assert "student.search.kwargs" in where
    r = load_recipe("digits-mlp", {"student.arch": "mlp_ensemble", "student.search.size_kib": 8})
    with pytest.raises(ConfigError, match="no search space"):
        search_space(r.student)


def _search_metrics(fits_last: bool = True) -> dict:
    rows = [{"index": i, "kwargs": {"hidden": [h]}, "params": 10 * h, "macs": 9 * h, "variant": "fp32",
             "runtime": "onnxruntime", "latency_ms": 0.01 * h, "size_bytes": 100 * h, "measured_on": "device",
             "fits": h <= 32, "proxy_val_accuracy": (0.5 + h / 100) if h <= 32 else None,
             "status": "over-budget" if h > 32 else "ranked"} for i, h in enumerate((8, 16, 32, 64))]
    rows[2]["status"] = "winner"
    return {"budget": {"latency_ms": 0.33, "size_kib": None}, "space_from": "zoo mlp", "measured_on": "device",
            "device": "host", "latency": "p50", "candidates": rows, "winner": rows[2], "why": "highest proxy"}


def test_report_section_final_check_and_miss_note(tmp_path):
    from edgekd.report.build import search_note, search_section
    from edgekd.report.markdown import search_lines
    from edgekd.report.plots import plot_search

    student = {"role": "student", "variant": "fp32", "latency_ms": {"p50": 0.32}, "size_bytes": 3200,
               "measured_on": "device", "device": "host"}
    sec = search_section(_search_metrics(), student)
    assert sec["final"]["met"] and search_note(sec) is None
    assert len(sec["candidates"]) == 4 and [r["fits"] for r in sec["candidates"]] == [True, True, True, False]
    md = "\n".join(search_lines(sec))
    assert "## Student search" in md and md.count("| hidden=[") == 4 and "budget met" in md
    slow = {**student, "latency_ms": {"p50": 0.5}}
    miss = search_section(_search_metrics(), slow)
    assert not miss["final"]["met"] and miss["final"]["checks"]["latency_ms"]["measured"] == 0.5
    assert "BUDGET MISSED" in search_note(miss) and "MISSED" in "\n".join(search_lines(miss))
    png = plot_search({"search": sec}, tmp_path / "search.png")
    assert png is not None and png.stat().st_size > 1000
    # the html report carries the same table and sentences as report.md, not only the plot
    import json

    from edgekd.report.html import render_html

    rep = json.loads((Path(__file__).parents[1] / "fixtures" / "report_fixture.json").read_text())
    page = render_html({**rep, "search": sec})
    assert "<h2>Student search</h2>" in page and page.count("hidden=[") == 4 and "budget met" in page


def test_skip_rule_needs_a_no_larger_miss_of_the_same_depth():
    """An architecture is not timed only when one no larger, of the same depth, already missed: by more than the
    margin for latency (timing noise), at all for size; other depths and other kwargs never count."""
    from edgekd.tasks.classification.search import skip_reason

    sc = load_recipe("fashion-cnn", {"student.search.latency_ms": "0.1ms"}).student.search
    assert sc.skip_margin == 1.25
    small = {"kwargs": {"widths": [8, 16], "hidden": 0}, "min_latency_ms": 0.2, "min_size_bytes": 1000}
    assert "not timed" in skip_reason({"widths": [16, 32], "hidden": 0}, [small], sc, "widths")
    assert skip_reason({"widths": [16, 8], "hidden": 0}, [small], sc, "widths") is None  # not wider everywhere
    assert skip_reason({"widths": [16, 32, 64], "hidden": 0}, [small], sc, "widths") is None  # another depth
    assert skip_reason({"widths": [16, 32], "hidden": 8}, [small], sc, "widths") is None  # another kwarg
    assert skip_reason({"widths": [16, 32], "hidden": 0}, [small], sc, None) is None  # a factory's kwargs: no order
    near = {**small, "min_latency_ms": 0.12}  # over, but within the margin: timing noise could flip it
    assert skip_reason({"widths": [16, 32], "hidden": 0}, [near], sc, "widths") is None
    untimed = {**small, "min_latency_ms": None}
    assert skip_reason({"widths": [16, 32], "hidden": 0}, [untimed], sc, "widths") is None
    sized = load_recipe("fashion-cnn", {"student.search.size_kib": 0.5}).student.search
    assert "KiB" in skip_reason({"widths": [8, 32], "hidden": 0}, [small], sized, "widths")
    off = load_recipe("fashion-cnn", {"student.search.latency_ms": "0.1ms", "student.search.skip_margin": None})
    assert skip_reason({"widths": [16, 32], "hidden": 0}, [small], off.student.search, "widths") is None


def test_report_rows_show_a_skipped_architecture():
    from edgekd.report.build import search_section
    from edgekd.report.markdown import search_lines

    m = _search_metrics()
    m["candidates"][3] |= {"latency_ms": None, "size_bytes": None, "macs": None, "variant": None, "measured_on": None,
                           "status": "skipped", "skipped": "not timed: hidden=[32] already took 0.9 ms"}
    sec = search_section(m, {"role": "student", "variant": "fp32", "latency_ms": {"p50": 0.3}, "size_bytes": 3200})
    md = "\n".join(search_lines(sec))
    assert "not timed: hidden=[32] already took 0.9 ms" in md and "| skipped |" in md


def test_stem_strides_follow_the_image_size():
    """The default space downsamples a large image at the stem (1, 2, 4, 8 while the first feature map keeps
    >= 16 px); a 28x28 image keeps the card's stride 1 (and its candidates' kwargs are unchanged)."""
    from edgekd.tasks.classification.search import search_space, stem_strides

    assert stem_strides(None, "small_cnn", (1, 28, 28)) == [1]
    assert stem_strides(None, "small_cnn", (3, 96, 96)) == [1, 2, 4]
    assert stem_strides(None, "small_cnn", (3, 224, 160)) == [1, 2, 4, 8]  # the shorter side decides
    assert stem_strides(None, "mlp", (3, 96, 96)) == [1]
    r = load_recipe("fashion-cnn", {"student.search.latency_ms": "1ms", "student.search.space.width_mult": [1.0],
                                    "student.search.space.depth_mult": [1.0]})
    small, _ = search_space(r.student, (1, 28, 28))
    assert [c.get("stem_stride") for c in small] == [None]
    big, where = search_space(r.student, (3, 96, 96))
    assert [c.get("stem_stride", 1) for c in big] == [1, 2, 4] and "stem_stride [1, 2, 4]" in where
    given = load_recipe("fashion-cnn", {"student.search.latency_ms": "1ms", "student.search.space.stem_stride": [2]})
    assert {c["stem_stride"] for c in search_space(given.student, (3, 96, 96))[0]} == {2}
    with pytest.raises(ConfigError):
        load_recipe("fashion-cnn", {"student.search.latency_ms": "1ms", "student.search.space.stem_stride": [0]})


def test_stem_stride_downsamples_the_first_stage():
    import torch

    from edgekd.zoo.cnn import SmallCNN

    m = SmallCNN(in_channels=3, widths=[4, 8], stem_stride=4)
    assert m.layer1(torch.zeros(1, 3, 96, 96)).shape[-1] == 12  # 96 / 4, then the stage's 2x2 pool
    assert m(torch.zeros(2, 3, 96, 96)).shape == (2, 10)


def test_cut_space_of_a_minilm_student():
    """A student cut from its teacher: num_layers x hidden_size as fractions of the teacher's, whole heads."""
    from edgekd.tasks.classification.search import order_key, search_space, skip_reason

    r = load_recipe("minilm-sentiment", {"student.search.latency_ms": "1ms"})
    cands, where = search_space(r.student)
    assert {c["num_layers"] for c in cands} == {2, 3, 4, 6} and {c["hidden_size"] for c in cands} == {96, 192, 288, 384}
    assert all(c["hidden_size"] % 32 == 0 and c["init_from"] == "trained_teacher" for c in cands)
    assert "6 layers x hidden 384" in where
    key = order_key(r.student)
    small = {"kwargs": cands[0], "min_latency_ms": 5.0, "min_size_bytes": 1}
    assert "not timed" in skip_reason(cands[-1], [small], r.student.search, key)  # deeper and wider than a 5x miss
    assert skip_reason({**cands[-1], "pooling": "cls"}, [small], r.student.search, key) is None  # another kwarg
    r = load_recipe("minilm-sentiment", {"student.search.latency_ms": "1ms", "student.search.space.width_mult": [1.5]})
    with pytest.raises(ConfigError, match="fractions"):
        search_space(r.student)


def test_lm_space_cuts_the_teacher_at_depth_x_ffn():
    """A language-model student cut from its teacher: depth x FFN fractions (the card's other kwargs kept), the
    card's space read as fractions, kwargs ranges as given; any other student, or a fraction > 1, is exit 2."""
    from edgekd.tasks.text_generation.search import LM_DEPTH, LM_FFN, _order, lm_search_space

    r = load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms"})
    cands, where = lm_search_space(r.student)
    assert len(cands) == len(LM_DEPTH) * len(LM_FFN)
    assert {(c["depth"], c["ffn"]) for c in cands} == {(d, f) for d in LM_DEPTH for f in LM_FFN}
    assert all(c["layers"] == "block_influence" and c["hidden"] == 1.0 for c in cands) and "pruned_llama" in where
    assert _order(r.student) == ("depth", "hidden", "heads", "kv_heads", "ffn")  # chains: one depth, FFN growing
    r = load_recipe("smollm2-seqkd", {"student.search.size_kib": 1024, "student.search.space.depth_mult": [0.5],
                                      "student.search.space.width_mult": [0.5, 1.0]})
    assert [(c["depth"], c["ffn"]) for c in lm_search_space(r.student)[0]] == [(0.5, 0.5), (0.5, 1.0)]
    r = load_recipe("smollm2-seqkd", {"student.search.size_kib": 1024, "student.search.kwargs.hidden": [0.5, 1.0]})
    assert [c["hidden"] for c in lm_search_space(r.student)[0]] == [0.5, 1.0] and _order(r.student) is not None
    for bad in ({"student.search.space.width_mult": [1.5]}, {"student.search.kwargs.ffn": [0.0]}):
        r = load_recipe("smollm2-seqkd", {"student.search.size_kib": 1024, **bad})
        with pytest.raises(ConfigError):
            lm_search_space(r.student)
    r = load_recipe("smollm2-seqkd", {"student.search.size_kib": 1024, "student.arch": "tiny_llama", "student.kwargs": {}})
    with pytest.raises(ConfigError, match="no search space") as e:
        lm_search_space(r.student)
    assert "pruned_llama" in e.value.hint


def test_lm_proxy_settings_are_the_cards_when_set():
    """A language model's proxy distillation: 64 answers, 1 epoch unless the card sets student.search.proxy_samples /
    proxy_epochs (whose own defaults size a classifier's proxy); the search stage's key follows them and the losses
    it trains with, not distill.epochs (the winner's training is the distill stage's)."""
    from edgekd.pipeline import BuildContext
    from edgekd.tasks.text_generation.search import LM_PROXY, _lm_search_cfg, proxy_settings

    r = load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms"})
    assert proxy_settings(r.student.search) == (LM_PROXY["samples"], LM_PROXY["epochs"])
    r2 = load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms", "student.search.proxy_samples": 200,
                                       "student.search.proxy_epochs": 3})
    assert proxy_settings(r2.student.search) == (200, 3)
    r3 = load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms", "student.search.proxy_samples": None})
    assert proxy_settings(r3.student.search) == (None, LM_PROXY["epochs"])  # null: every training answer

    def cfg(recipe):
        return _lm_search_cfg(BuildContext(out=Path("."), recipe=recipe, target=load_target("cpu"), recipe_ref="x",
                                           target_ref="cpu"))["proxy"]
    base = cfg(r)
    assert [lo["kind"] for lo in base["losses"]] == [lo.kind for lo in r.distill.losses if lo.kind != "hidden_state"]
    assert cfg(load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms", "distill.epochs": 9})) == base
    assert cfg(r2) != base
    assert cfg(load_recipe("smollm2-seqkd", {"student.search.latency_ms": "20ms", "distill.lr": 1e-5})) != base


def _synthetic(cands, budget_ms):
    """A measure function whose latency grows with width and depth (0.01 ms per channel-layer), counting calls."""
    calls = []

    def measure(i, kw):
        calls.append(i)
        lat = 0.01 * sum(kw["widths"])
        return {"index": i, "kwargs": kw, "params": sum(kw["widths"]) * 10, "latency_ms": lat, "min_latency_ms": lat,
                "size_bytes": 100, "min_size_bytes": 100, "fits": lat <= budget_ms, "variant": "fp32"}

    def not_timed(i, kw, why, fits):
        return {"index": i, "kwargs": kw, "params": sum(kw["widths"]) * 10, "latency_ms": None, "min_latency_ms": None,
                "size_bytes": None, "min_size_bytes": None, "fits": fits, "skipped": why, "variant": None}
    return measure, not_timed, calls


@pytest.mark.parametrize("budget_ms", [0.05, 0.5, 1.0, 1.5, 10.0])
def test_bisection_times_fewer_and_infers_every_fit_right(budget_ms):
    """Along each chain (same depth, wider) the smallest is timed, then a bisection finds the largest that fits:
    every row's fit is what timing it would say, fewer are timed than there are candidates, and the top_k largest
    fitting are all timed in the end."""
    from edgekd.tasks.search_common import ensure_measured, measure_space

    sc = load_recipe("fashion-cnn", {"student.search.latency_ms": f"{budget_ms}ms"}).student.search
    cands = [{"hidden": 0, "widths": [w * m for w in base]} for base in ([4, 8], [4, 8, 16], [4, 8, 16, 16])
             for m in (1, 2, 3, 4, 6, 8)]
    measure, not_timed, calls = _synthetic(cands, budget_ms)
    rows = measure_space(cands, sc, "widths", measure, not_timed)
    truth = [0.01 * sum(c["widths"]) <= budget_ms for c in cands]
    assert [r["fits"] for r in rows] == truth
    assert len(calls) < len(cands) and len(set(calls)) == len(calls)  # nothing timed twice
    if not any(truth):
        with pytest.raises(Exception, match="no student of the search space fits"):
            ensure_measured(rows, cands, sc, "here", measure)
        return
    fitting, ranked = ensure_measured(rows, cands, sc, "here", measure)
    best = sorted((c for c, t in zip(cands, truth) if t), key=lambda c: sum(c["widths"]), reverse=True)[: sc.top_k]
    assert [r["kwargs"] for r in ranked] == best and all(r["latency_ms"] is not None for r in ranked)
    assert len(fitting) == sum(truth)
    # no order (a user's kwargs ranges): every candidate is timed
    measure, not_timed, calls = _synthetic(cands, budget_ms)
    assert [r["fits"] for r in measure_space(cands, sc, None, measure, not_timed)] == truth and len(calls) == len(cands)


def test_proxy_rows_are_a_seeded_sorted_subset_or_all():
    """Both searches' proxy distillations train on proxy_rows: `samples` distinct sorted rows of n, the same for a
    seed, every row when samples is None or not fewer than n."""
    import numpy as np

    from edgekd.tasks.search_common import proxy_rows

    r = proxy_rows(100, 10, 0)
    assert len(r) == 10 and len(set(r.tolist())) == 10 and list(r) == sorted(r) and r.max() < 100
    assert (proxy_rows(100, 10, 0) == r).all() and not (proxy_rows(100, 10, 1) == r).all()
    assert (proxy_rows(5, None, 0) == np.arange(5)).all() and (proxy_rows(5, 9, 0) == np.arange(5)).all()
