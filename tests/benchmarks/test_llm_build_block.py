"""The README's llm-build block (readme_numbers.llm_build) on the card's build: the answers per training prompt and
the epoch chosen on validation, and what the recipe change bought against the build before it."""
import copy
import json

from tests.conftest import ROOT


def _render(readme_numbers, tmp_path, monkeypatch, d: dict) -> str:
    results = tmp_path / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "llm.json").write_text(json.dumps(d))
    monkeypatch.setattr(readme_numbers, "RESULTS", results)
    return readme_numbers.llm_build()


def _shift(held_out: dict, by: float) -> dict:
    out = copy.deepcopy(held_out)
    for split in out["student"].values():
        split["agreement"] += by
    return out


def test_the_build_says_its_samples_best_epoch_and_what_they_bought(readme_numbers, tmp_path, monkeypatch):
    d = json.loads((ROOT / "benchmarks" / "results" / "llm.json").read_text())
    prev = {**{k: copy.deepcopy(d[k]) for k in ("created", "generation", "losses", "held_out", "held_out_goals")},
            "created": "2026-01-01T00:00:00Z"}
    prev["generation"].pop("train_samples", None)
    prev["losses"]["epochs"] = 4
    now = copy.deepcopy(d)
    now["generation"]["train_samples"] = {"per_prompt": 4, "temperature": 0.7, "top_p": 0.9, "asked": 2262,
                                          "kept": 2250, "seconds": 2640.0}
    now["losses"]["epochs"], now["best_epoch"] = 2, 1
    now["held_out"] = _shift(d["held_out"], 0.03)
    now["superseded"] = [prev]
    text = _render(readme_numbers, tmp_path, monkeypatch, now)
    assert "4 answers per training prompt (the greedy one and 2,250 sampled at temperature 0.7, top-p 0.9" in text
    assert "2 epochs (the best on validation: epoch 1)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("Against the card's build before it"))
    assert "(2026-01-01: 1 answer per training prompt, 4 epochs" in line and "this build (4 answers" in line
    held = d["held_out"]["student"]["held-out-template"]["agreement"]
    assert f"held-out-template {100 * held:.1f}% → {100 * (held + 0.03):.1f}% (+3.00 pt)" in line
    # a build before it on another split is not compared: other held-out templates, or other split sizes
    prev["generation"]["split"] = {**prev["generation"]["split"], "test_templates": ["country"]}
    assert "Against the card's build before it" not in _render(readme_numbers, tmp_path, monkeypatch, now)
    prev["generation"]["split"] = copy.deepcopy(now["generation"]["split"])
    prev["generation"]["splits"] = {**prev["generation"]["splits"], "train": 1}
    assert "Against the card's build before it" not in _render(readme_numbers, tmp_path, monkeypatch, now)
    # one answer per prompt, no best epoch recorded: the sentence says neither
    d.pop("superseded", None)
    d.pop("best_epoch", None)
    d["generation"].pop("train_samples", None)
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert "answers per training prompt" not in text and "best on validation" not in text


def test_a_teacher_timing_that_moved_between_builds_is_said(readme_numbers, tmp_path, monkeypatch):
    d = json.loads((ROOT / "benchmarks" / "results" / "llm.json").read_text())
    prev = {"created": "2026-01-01T00:00:00Z", "models": copy.deepcopy(d["models"])}
    d["superseded"] = [prev]
    assert "the same graph in both builds" not in _render(readme_numbers, tmp_path, monkeypatch, d)
    t = next(m for m in prev["models"] if m["model"] == "teacher/fp32")
    t["tokens_per_s"] *= 1.25  # the build before decoded faster: this host ran slower this time
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert "in the build before (0.80×) on this host: tokens/s and their ratios compare within one build" in text


def test_answers_read_from_the_cache_cite_the_build_that_sampled_them(readme_numbers, tmp_path, monkeypatch):
    d = json.loads((ROOT / "benchmarks" / "results" / "llm.json").read_text())
    caches = ["/c/a.jsonl", "/c/b.jsonl"]
    ts = {"per_prompt": 3, "temperature": 0.7, "top_p": 0.9, "asked": 100, "kept": 99, "caches": caches}
    d["generation"]["train_samples"] = {**ts, "seconds": 0.05}  # read from the cache: no sampling in this build
    prev = {"created": "2026-01-01T00:00:00Z", "generation": {"train_samples": {**ts, "seconds": 1500.0}}}
    d["superseded"] = [prev]
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert "read from the generation cache: the teacher took 25 min to sample them for the build of 2026-01-01" in text
    assert "0 min to sample" not in text
    # the build before sampled other answers (other cache files): its time is not this build's
    prev["generation"]["train_samples"]["caches"] = ["/c/other.jsonl"]
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert "read from the generation cache)" in text and "25 min" not in text


def test_the_build_says_its_general_texts_hard_labels_and_validation_ratio(readme_numbers, tmp_path, monkeypatch):
    d = json.loads((ROOT / "benchmarks" / "results" / "llm.json").read_text())
    d["general_text"] = {"source": "rt", "samples": 1000, "tokens": 24806, "weight": 0.5, "top_k": 16, "hard_label": 0.5}
    d["natural_text_val"] = {"perplexity_ratio": 2.345}
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert ("0.5 × token-level KD on 1,000 general-text snippets (24,806 tokens, top-16, 0.5 of that weight on the "
            "text's own next tokens)") in text
    assert "; 2.3× on the validation snippets)" in text
    d["general_text"]["hard_label"] = 0.0  # a build before the option, or at its default: neither is said
    d.pop("natural_text_val")
    text = _render(readme_numbers, tmp_path, monkeypatch, d)
    assert "own next tokens" not in text and "validation snippets" not in text and "(24,806 tokens, top-16)" in text
