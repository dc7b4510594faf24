"""Shipped teacher weights through the real CLI: a quick build of a tiny digits card whose teacher
names verified weights beside the card (no teacher training, origin in the report); a wrong sha256
is one line + hint and exit 2 with no build folder; --set teacher.retrain=true trains instead."""
import json
import os
import subprocess
import sys

import pytest

from tests.tasks.test_shipped_teacher import sha256, teacher_stage, write_card

pytestmark = pytest.mark.e2e


def edgekd(*args, cache, cwd, timeout=900):
    env = {**os.environ, "EDGEKD_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    from safetensors.torch import save_file
    import torch

    root = tmp_path_factory.mktemp("shipcli")
    trained = teacher_stage(write_card(root / "plain"), root / "trained", root / "train-cache")
    w = root / "cards" / "weights" / "t.safetensors"
    w.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in torch.load(trained.path("model"), weights_only=True).items()}, str(w))
    good = write_card(root / "cards", {"path": "weights/t.safetensors", "sha256": sha256(w)}, "good.yaml")
    bad = write_card(root / "cards", {"path": "weights/t.safetensors", "sha256": "f" * 64}, "bad.yaml")
    return {"root": root, "good": good, "bad": bad, "weights": w, "trained": trained.metrics}


def test_quick_build_uses_the_shipped_teacher_and_says_so(cards, tmp_path):
    out = tmp_path / "b"
    r = edgekd("build", "--recipe", str(cards["good"]), "--quick", "--out", str(out), cache=tmp_path / "cache",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teacher epoch" not in r.stdout and "teacher from shipped weights weights/t.safetensors" in r.stdout
    rep = json.loads((out / "report" / "report.json").read_text())
    t = rep["training"]["teacher"]
    assert t["origin"] == "shipped" and t["shipped"]["sha256"] == sha256(cards["weights"])
    assert t["test_accuracy"] == cards["trained"]["test_accuracy"]  # measured again, same weights
    assert any(n.startswith("Teacher: shipped weights weights/t.safetensors (sha256 " + sha256(cards["weights"]))
               for n in rep["notes"])
    assert "Teacher: shipped weights" in (out / "report" / "report.md").read_text()
    assert any(m["variant"] == "fp32-torch" and m["latency_ms"]["p50"] > 0 for m in rep["models"])  # profiled as torch
    assert not (tmp_path / "cache" / "teachers").exists()


def test_wrong_sha256_is_one_line_exit_2_and_no_build_folder(cards, tmp_path):
    out = tmp_path / "b"
    r = edgekd("build", "--recipe", str(cards["bad"]), "--quick", "--out", str(out), cache=tmp_path / "cache",
               cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: shipped teacher weights weights/t.safetensors fail their check: sha256 ")
    assert "Traceback" not in r.stderr and any("--set teacher.retrain=true" in ln for ln in lines[1:])
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_retrain_trains_the_teacher_ignoring_the_file(cards, tmp_path):
    out = tmp_path / "b"
    r = edgekd("build", "--recipe", str(cards["bad"]), "--quick", "--set", "teacher.retrain=true", "--out", str(out),
               cache=tmp_path / "cache", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teacher epoch 1/3" in r.stdout
    t = json.loads((out / "report" / "report.json").read_text())["training"]["teacher"]
    assert t["origin"] == "trained" and t["shipped"] is None and t["cached"] is False
    assert t["test_accuracy"] == cards["trained"]["test_accuracy"]  # the same seeded training as the plain card
