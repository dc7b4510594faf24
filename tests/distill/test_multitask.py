"""Multi-task distillation: an auxiliary task (own data, labels, teacher, weight) shares the trunk."""
import json
import subprocess
import sys

import yaml

from edgekd.cards import shipped

PARITY = {"name": "parity", "data": {"kind": "digits"}, "weight": 0.5, "label_map": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
          "head_from": "layer1",
          "teacher": {"arch": "mlp", "kwargs": {"in_features": 64, "hidden": [64], "num_classes": 2},
                      "train": {"epochs": 8, "batch_size": 64, "lr": 0.003}}}


def _recipe(tmp_path, task):
    raw = yaml.safe_load(shipped("models")["digits-mlp"].read_text())
    raw["distill"]["tasks"] = [task]
    raw["quantize"] = {"candidates": ["fp32"]}
    p = tmp_path / "mt.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _build(tmp_path, recipe):
    return subprocess.run([sys.executable, "-m", "edgekd", "build", "--recipe", str(recipe), "--quick", "--quiet",
                           "--out", str(tmp_path / "b"), "--set", "target.profile.min_runs=10",
                           "--set", "target.profile.max_seconds=1"],
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "EDGEKD_CACHE": str(tmp_path / "c")})


def test_auxiliary_task_trains_its_head_on_the_shared_trunk(tmp_path):
    r = _build(tmp_path, _recipe(tmp_path, PARITY))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "b" / "distill" / "result.json").read_text())
    m = res["metrics"]
    assert m["tasks"]["parity"]["test_accuracy"] > 0.8  # chance is 0.5
    assert "task_heads" in res["outputs"] and (tmp_path / "b" / "distill" / "task_heads.pt").is_file()
    last = m["history"][-1]
    assert "loss_task_parity" in last and "val_accuracy_parity" in last
    t = json.loads((tmp_path / "b" / "teacher" / "result.json").read_text())["metrics"]
    assert t["tasks"]["parity"]["test_accuracy"] > 0.8
    assert m["test_accuracy"] > 0.8  # the main task still learns


def test_task_teacher_with_wrong_class_count(tmp_path):
    bad = json.loads(json.dumps(PARITY))
    bad["teacher"]["kwargs"]["num_classes"] = 3
    r = _build(tmp_path, _recipe(tmp_path, bad))
    assert r.returncode == 2 and "parity" in r.stderr and "num_classes" in r.stderr
