"""The student search (issue #29): budget parsing, the space a zoo student implies, the report section."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.cards import load_recipe
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
