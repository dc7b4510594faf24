"""The README's "What distillation buys" table is generated from the results files and matches them."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("readme_kd", ROOT / "benchmarks" / "readme_kd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_matches_results(gen):
    readme = (ROOT / "README.md").read_text()
    assert gen.render(readme) == readme, "stale table: run python benchmarks/readme_kd.py"


def test_rows_come_from_the_files_and_keep_losses(gen, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    run = {"kd_accuracy": 0.92, "control_accuracy": 0.921, "kd_gain_points": -0.1, "measured_with": "x"}
    distill = {"created": "2026-12-03T09:00:00Z", "control": {"fashion-cnn": {"quick": False, "seeds": 2, "epochs": None,
               "variants": {"consistent": {
                   "overrides": ["distill.control=true", "distill.augment=true", "distill.teacher_cache.views=8"],
                   "kd_accuracy": {"mean": 0.925}, "control_accuracy": {"mean": 0.92}, "created": "2026-12-03T09:30:00Z",
                   "runs": [{"seed": 0, **run, "kd_gain_points": 1.1}, {"seed": 1, **run}, {"seed": 2, "error": "x"}]}}}}}
    (res / "distill.json").write_text(json.dumps(distill))
    rows = gen.rows(res)
    assert rows == [["fashion-cnn", "consistent teaching: augmented inputs, teacher logits of the same views (8 cached views)",
                     "accuracy, fp32 ONNX in onnxruntime", "2", "92.50%", "92.00%", "+0.50 pt (-0.10 … +1.10)",
                     "distill.json control (2026-12-03)"]]
    shutil.copy(ROOT / "benchmarks" / "results" / "llm.json", res / "llm.json")
    text = gen.table(res)
    assert "smollm2-seqkd" in text and text.count("\n") == 3  # header, rule, two rows
    with pytest.raises(SystemExit, match="markers"):
        gen.render("no markers here", res)
