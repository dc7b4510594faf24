"""benchmarks/bench_lm_samples.py and its README block: answers per prompt read against the distinct-prompt curve and
against more epochs at equal training steps."""
import json
import math

import pytest

from tests.conftest import benchmark_script


def _point(k: int, e: int, held: float, natural: float, fit: float | None = None) -> dict:
    ci = {"agreement": held, "agreement_ci95": [held - 0.02, held + 0.02]}
    return {"samples_per_prompt": k, "epochs": e, "answers": 754 * k, "train_prompts": 754,
            "trained_examples": 754 * k * e, "held_out_test": held, "natural": natural,
            "held_out": {"test": ci, "test_in_template": {"agreement": held + 0.05, "agreement_ci95": [held, held + 0.1]}},
            "natural_prompts": {"agreement": natural, "agreement_ci95": [natural - 0.02, natural + 0.02]},
            "natural_text_perplexity_ratio": 12.0, "train_seconds": 200.0 * k * e,
            "sampling": {"kept": 754 * (k - 1) - 3, "asked": 754 * (k - 1), "seconds": 840.0 * (k - 1),
                         "temperature": 0.7, "top_p": 0.9} if k > 1 else None,
            "distinct_prompts_log_fit": {"held_out_test": fit, "natural": fit - 0.08} if fit else None,
            "distinct_prompts_extrapolated": k * e > 1}


def _render(readme_numbers, tmp_path, monkeypatch, points) -> str:
    results = tmp_path / "results"
    results.mkdir(parents=True)
    (results / "lm_samples.json").write_text(json.dumps({
        "benchmark": "lm_samples", "host": "h", "cpu_count": 2, "created": "2026-12-07T00:00:00Z",
        "prompts": "p.jsonl", "threads": 2, "notes": [], "settings": "the curve's", "points": points,
        "sampling": {"temperature": 0.7, "top_p": 0.9}}))
    monkeypatch.setattr(readme_numbers, "RESULTS", results)
    return readme_numbers.lm_samples()


def test_the_block_says_which_way_each_comparison_went(readme_numbers, tmp_path, monkeypatch):
    text = _render(readme_numbers, tmp_path, monkeypatch, [
        _point(1, 1, 0.40, 0.33, 0.40), _point(4, 1, 0.44, 0.36, 0.49), _point(1, 4, 0.45, 0.35, 0.49)])
    assert "| 4 × 1 | 3,016 (754) | 3,016 |" in text and "| 1 × 4 | 754 (754) | 3,016 |" in text
    assert "4 answers per prompt against 1, one epoch each: held-out +4.00 pt" in text
    # 44% against the fit's 49% held out, 36% against its 41% natural
    assert "bought less than new prompts are read to buy on held-out templates, less than on natural" in text
    assert "held-out 44.0% vs 45.0% (-1.00 pt)" in text  # 4 x 1 against 1 x 4: more passes won here
    assert "not reached by any point (best held-out 45.0%)" in text
    text = _render(readme_numbers, tmp_path / "b", monkeypatch, [
        _point(1, 1, 0.40, 0.33, 0.40), _point(4, 1, 0.56, 0.46, 0.49)])
    assert "bought more than new prompts" in text and "more than on natural" in text and "reached by 4 × 1" in text
    assert "at equal training steps" not in text  # no 1 x 4 point: no such comparison


def test_the_distinct_prompt_fit_is_read_from_the_curve_on_the_same_prompts(monkeypatch, tmp_path):
    samples = benchmark_script("bench_lm_samples")
    pts = [{"train_prompts": n, "held_out_test": 0.1 + 0.05 * math.log(n), "natural": 0.05 * math.log(n)}
           for n in (188, 377, 754)]
    (tmp_path / "lm_curve.json").write_text(json.dumps({
        "prompts": "other.jsonl", "epochs": 1, "points": [],
        "superseded": [{"prompts": "p.jsonl", "epochs": 1, "created": "x", "points": pts}]}))
    monkeypatch.setattr(samples, "RESULTS", tmp_path)
    c = samples.distinct_curve("p.jsonl")
    assert c["largest"] == 754 and c["log_fit"]["held_out_test"]["b"] == pytest.approx(0.05)
    assert c["log_fit"]["held_out_test"]["a"] == pytest.approx(0.1)
    assert samples.distinct_curve("none.jsonl") is None
