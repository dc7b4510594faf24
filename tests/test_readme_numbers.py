"""README's result figures come from benchmarks/results/*.json, and the README points only inside the repo."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"



def test_readme_agrees_with_results_files(readme_numbers):
    assert readme_numbers.main(["--check"]) == 0, "README.md disagrees with benchmarks/results: run `make readme-numbers`"


def test_check_fails_when_a_readme_figure_is_edited(readme_numbers, tmp_path):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- readme-numbers:fashion-cnn -->.*?<!-- /readme-numbers:fashion-cnn -->", text, re.S).group(0)
    edited = block.replace("% retained", "% (edited) retained", 1)
    assert edited != block
    copy = tmp_path / "README.md"
    copy.write_text(text.replace(block, edited), encoding="utf-8")
    assert readme_numbers.main(["--check", "--readme", str(copy)]) == 1
    assert readme_numbers.main(["--readme", str(copy)]) == 0 and copy.read_text(encoding="utf-8") == text  # regenerated


def test_check_fails_when_a_results_file_changes(readme_numbers, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(readme_numbers.RESULTS, results)
    spine = json.loads((results / "spine.json").read_text())
    # a figure measured elsewhere, not in this file (5 points off: it shows at any rounding)
    spine["headline"]["teacher_accuracy"] -= 0.05
    (results / "spine.json").write_text(json.dumps(spine))
    monkeypatch.setattr(readme_numbers, "RESULTS", results)
    assert readme_numbers.main(["--check"]) == 1


def test_readme_points_only_inside_the_repository():
    text = README.read_text(encoding="utf-8")
    for outside in ("/work/", "../shared", "ENVIRONMENT.md", "ARCHITECTURE.md", "/tmp/"):
        assert outside not in text, outside
    for path in re.findall(r"`((?:edgekd|benchmarks|models|targets|tests|baselines)/[^`\s]*)`", text):
        path = path.rstrip("/")
        if any(ch in path for ch in "*…<{") or re.search(r"[A-Z]{3,}", path):
            continue  # a pattern or placeholder (models/NAME.yaml), not a file
        assert (ROOT / path).exists(), f"README names {path}, which is not in the repository"


def test_a_full_build_with_the_shipped_teacher_is_not_called_cached(readme_numbers, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(readme_numbers.RESULTS, results)
    spine = json.loads((results / "spine.json").read_text())
    spine.pop("teacher_training_s_one_time", None)
    spine.update({"full_build_s": 780.0, "full_build_teacher_origin": "shipped"})
    (results / "spine.json").write_text(json.dumps(spine))
    monkeypatch.setattr(readme_numbers, "RESULTS", results)
    block = readme_numbers.fashion_cnn()
    assert "the teacher from its shipped weights, measured not trained): 13.0 min." in block
    assert "teacher cached" not in block and "training the teacher once" not in block
