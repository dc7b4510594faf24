"""The README's "What distillation buys" table (readme_numbers block `kd-gain`) comes from the results
files, one row per measured comparison, losses included."""
import json
import shutil
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent



def test_kd_rows_come_from_the_files_and_keep_losses(readme_numbers, tmp_path, monkeypatch):
    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(readme_numbers, "RESULTS", res)
    run = {"kd_accuracy": 0.92, "control_accuracy": 0.921, "kd_gain_points": -0.1, "measured_with": "x"}
    distill = {"created": "2026-12-03T09:00:00Z", "control": {"fashion-cnn:train_size=5000": {
        "recipe": "fashion-cnn", "quick": False, "seeds": 2, "epochs": None, "train_size": 5000,
        "extra_sets": ["teacher.train.epochs=8"], "variants": {"consistent": {
            "overrides": ["distill.control=true", "distill.augment=true", "distill.teacher_cache.views=8"],
            "kd_accuracy": {"mean": 0.925}, "control_accuracy": {"mean": 0.92}, "created": "2026-12-03T09:30:00Z",
            "runs": [{"seed": 0, **run, "kd_gain_points": 1.1}, {"seed": 1, **run}, {"seed": 2, "error": "x"}]}}}}}
    (res / "distill.json").write_text(json.dumps(distill))
    assert readme_numbers.kd_rows() == [[
        "fashion-cnn", "consistent teaching: augmented inputs, teacher logits of the same views (8 cached views), "
        "5,000 training images, teacher.train.epochs=8", "accuracy, fp32 ONNX in onnxruntime", "2", "92.50%",
        "92.00%", "+0.50 pt (-0.10 … +1.10)", "distill.json control (2026-12-03)"]]  # the losing seed shows
    shutil.copy(readme_numbers.README.parent / "benchmarks" / "results" / "llm.json", res / "llm.json")
    table = readme_numbers.kd_gain()
    assert "smollm2-seqkd" in table and table.count("\n") == 4  # header, rule, two rows


def test_a_changed_control_result_makes_the_readme_stale(readme_numbers, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(readme_numbers.RESULTS, results)
    d = json.loads((results / "distill.json").read_text())
    d["control"]["digits-mlp"]["variants"]["recipe"]["runs"][0]["kd_gain_points"] = -5.0
    (results / "distill.json").write_text(json.dumps(d))
    monkeypatch.setattr(readme_numbers, "RESULTS", results)
    assert readme_numbers.main(["--check"]) == 1


def test_a_row_measured_with_another_student_than_the_cards_names_it(readme_numbers, tmp_path, monkeypatch):
    """A card that changes its student must not turn an old measurement into "as shipped": the row names the
    student it was measured with, and the entry with the card's student now is the one called as shipped."""
    import yaml

    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(readme_numbers, "RESULTS", res)
    card = yaml.safe_load((ROOT / "models" / "fashion-cnn.yaml").read_text())["student"]
    other = {**card["kwargs"], "widths": [8, 8, 8]}
    run = {"seed": 0, "kd_accuracy": 0.92, "control_accuracy": 0.91, "kd_gain_points": 1.0}
    variant = {"kd_accuracy": {"mean": 0.92}, "control_accuracy": {"mean": 0.91}, "runs": [run]}
    entry = {"recipe": "fashion-cnn", "extra_sets": [], "variants": {"recipe": variant}}
    distill = {"created": "2026-12-05T00:00:00Z", "control": {
        "fashion-cnn": {**entry, "student": {"arch": card["arch"], "kwargs": card["kwargs"]}},
        "fashion-cnn:old": {**entry, "student": {"arch": card["arch"], "kwargs": other}},
        "fashion-cnn:unrecorded": entry}}
    (res / "distill.json").write_text(json.dumps(distill))
    settings = [r[1] for r in readme_numbers.kd_rows()]
    assert settings == ["as shipped", "the card, with student.kwargs.widths=[8, 8, 8]", "as shipped"]
