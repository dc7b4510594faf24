"""A teacher from weights shipped beside its card: verified by sha256 before use and not trained;
a missing or altered file is one line and exit 2 naming `--set teacher.retrain=true`; retrain=true
trains with the card's `train` exactly as a card without shipped weights (same stage and cache keys).
A tiny MLP teacher on sklearn digits stands in for the fashion-cnn teacher."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from edgekd.cards import load_recipe, load_target
from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, run
from edgekd.tasks import graph_for

CARD = {
    "schema_version": 1, "name": "tiny-shipped", "task": "tabular-classification",
    "data": {"kind": "digits", "val_fraction": 0.15, "seed": 0},
    "teacher": {"arch": "mlp", "kwargs": {"in_features": 64, "hidden": [32]},
                "train": {"epochs": 3, "batch_size": 64, "lr": 0.003, "seed": 0}},
    "student": {"arch": "mlp", "kwargs": {"in_features": 64, "hidden": [8]}},
    "distill": {"epochs": 1, "control": False},
}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_card(folder: Path, shipped: dict | None = None, name: str = "card.yaml") -> Path:
    card = json.loads(json.dumps(CARD))
    if shipped is not None:
        card["teacher"]["shipped"] = shipped
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(card, sort_keys=False))
    return folder / name


def teacher_stage(card: Path, out: Path, cache: Path, sets: dict | None = None):
    recipe = load_recipe(str(card), sets or {})
    ctx = BuildContext(out=out, recipe=recipe, target=load_target("cpu"), recipe_ref=str(card), target_ref="cpu",
                       overrides=sets or {}, cache_dir=cache)
    return run(graph_for(recipe), ctx, upto="teacher")["teacher"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A teacher trained by the card's own `train` (no shipped weights), shipped as safetensors
    beside a copy of the card under weights/ with its sha256."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("shipped")
    trained = teacher_stage(write_card(root / "plain"), root / "trained", root / "cache")
    state = torch.load(trained.path("model"), weights_only=True)
    w = root / "cards" / "weights" / "tiny-teacher.safetensors"
    w.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(w))
    card = write_card(root / "cards", {"path": "weights/tiny-teacher.safetensors", "sha256": sha256(w)})
    return {"root": root, "card": card, "weights": w, "trained": trained}


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the teacher was trained although verified shipped weights were given")

    monkeypatch.setattr("edgekd.distill.trainer.train", refuse)


def test_verified_shipped_weights_are_used_without_training(shipped, tmp_path, no_training):
    res = teacher_stage(shipped["card"], tmp_path / "b", tmp_path / "cache")
    m, trained = res.metrics, shipped["trained"].metrics
    assert m["origin"] == "shipped" and m["train_seconds"] == 0.0 and m["history"] == []
    assert m["shipped"] == {"path": "weights/tiny-teacher.safetensors", "sha256": sha256(shipped["weights"])}
    # the same weights, measured again here: the trained teacher's accuracies exactly
    assert m["test_accuracy"] == trained["test_accuracy"] and m["val_accuracy"] == trained["val_accuracy"]
    assert 0.8 < m["test_accuracy"] <= 1.0
    # the stage's teacher.pt is byte for byte the trained one (so the logit cache keys agree)
    assert sha256(res.path("model")) == sha256(shipped["trained"].path("model"))
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing trained, nothing cached
    assert [p.name for p in res.dir.iterdir()] and not list(res.dir.glob(".shipped*"))


def test_shipped_path_is_relative_to_the_card_not_the_working_folder(shipped, tmp_path, monkeypatch, no_training):
    monkeypatch.chdir(tmp_path)
    assert load_recipe(str(shipped["card"])).teacher.shipped_file() == shipped["weights"]
    assert teacher_stage(shipped["card"], tmp_path / "b", tmp_path / "cache").metrics["origin"] == "shipped"


def _fails_before_any_work(card: Path, tmp_path: Path, needle: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        teacher_stage(card, tmp_path / "b", tmp_path / "cache")
    err = e.value
    assert err.exit_code == 2 and needle in err.message and "\n" not in err.message
    assert "--set teacher.retrain=true" in err.hint
    assert not (tmp_path / "b").exists() and not (tmp_path / "cache").exists()  # pre-flight: nothing written
    return err


def test_wrong_sha256_exits_2_before_any_work(shipped, tmp_path, no_training):
    card = write_card(shipped["card"].parent, {"path": "weights/tiny-teacher.safetensors", "sha256": "0" * 64}, "bad.yaml")
    err = _fails_before_any_work(card, tmp_path, "weights/tiny-teacher.safetensors fail their check")
    assert sha256(shipped["weights"])[:16] in err.message and "0" * 16 in err.message


def test_missing_file_exits_2_before_any_work(shipped, tmp_path, no_training):
    card = write_card(shipped["card"].parent, {"path": "weights/gone.safetensors", "sha256": "0" * 64}, "gone.yaml")
    _fails_before_any_work(card, tmp_path, "weights/gone.safetensors are missing")


def test_bytes_altered_after_the_preflight_are_refused_and_leave_no_stage(shipped, tmp_path, monkeypatch, no_training):
    """The stage checks its own copy: a file changed between the pre-flight check and the load is
    refused, and the failed stage leaves neither a teacher folder nor a temporary one."""
    import shutil

    real = shutil.copyfile

    def tampered(src, dst, *a, **k):
        real(src, dst, *a, **k)
        with open(dst, "r+b") as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 0xFF]))

    monkeypatch.setattr("edgekd.tasks.classification.teacher.shutil.copyfile", tampered)
    with pytest.raises(ConfigError, match="fail their check") as e:
        teacher_stage(shipped["card"], tmp_path / "b", tmp_path / "cache")
    assert e.value.exit_code == 2
    out = tmp_path / "b"
    assert not (out / "teacher").exists() and not list(out.glob(".teacher.tmp-*"))
    assert json.loads((out / "run.json").read_text())["status"].startswith("failed: shipped teacher weights")


def test_retrain_trains_with_the_keys_of_the_card_without_shipped_weights(shipped, tmp_path, monkeypatch):
    from edgekd.distill import trainer

    calls = []
    real = trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = teacher_stage(shipped["card"], tmp_path / "b", tmp_path / "cache", {"teacher.retrain": True})
    assert calls == [1] and res.metrics["origin"] == "trained" and len(res.metrics["history"]) == 3
    # same card settings, same data: the stage key and the teacher cache key of the plain card
    assert res.key == shipped["trained"].key
    assert res.metrics["cache_key"] == shipped["trained"].metrics["cache_key"]
    assert sha256(res.path("model")) == sha256(shipped["trained"].path("model"))
    # a second build with retrain takes the trained teacher from the cache, as before
    again = teacher_stage(shipped["card"], tmp_path / "b2", tmp_path / "cache", {"teacher.retrain": True})
    assert calls == [1] and again.metrics["cached"] is True


def test_retrain_ignores_a_missing_or_wrong_file(shipped, tmp_path):
    card = write_card(shipped["card"].parent, {"path": "weights/gone.safetensors", "sha256": "0" * 64}, "gone2.yaml")
    res = teacher_stage(card, tmp_path / "b", shipped["root"] / "cache", {"teacher.retrain": True})
    assert res.metrics["origin"] == "trained" and res.metrics["cached"] is True  # the fixture's trained entry


@pytest.mark.parametrize("teacher,match", [
    ({"arch": "mlp", "shipped": {"path": "w.safetensors", "sha256": "a" * 64}}, "teacher.shipped needs teacher.train"),
    ({"arch": "mlp", "weights": "w.pt", "retrain": True}, "teacher.retrain=true needs a teacher.train"),
    ({"arch": "mlp", "train": {}, "shipped": {"path": "w.safetensors", "sha256": "abc"}}, "teacher.shipped.sha256"),
    ({"arch": "mlp", "train": {}, "shipped": {"path": "w.safetensors"}}, "teacher.shipped.sha256"),
])
def test_card_errors(tmp_path, teacher, match):
    card = json.loads(json.dumps(CARD))
    card["teacher"] = teacher
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(card))
    with pytest.raises(ConfigError, match=match) as e:
        load_recipe(str(p))
    assert e.value.exit_code == 2


def test_fashion_cnn_quick_build_measures_the_shipped_teacher():
    """--quick (CI's gate, baselines/fashion-cnn-cpu-quick.json) uses the verified shipped teacher, not a
    2-epoch one trained on the subset; --set teacher.retrain=true still trains the card's `train` on it."""
    quick = load_recipe("fashion-cnn", quick=True).teacher
    assert quick.uses_shipped and quick.shipped is not None
    retrained = load_recipe("fashion-cnn", quick=True, overrides={"teacher.retrain": True}).teacher
    assert not retrained.uses_shipped and retrained.train.epochs == load_recipe("fashion-cnn").teacher.train.epochs


def test_shipped_recipes_weights_exist_and_verify():
    """Every shipped recipe that names shipped teacher weights ships them, with the recorded sha256
    (and its provenance file with the command that reproduces them)."""
    from edgekd.cards import shipped as shipped_cards
    from edgekd.zoo.files import check_shipped

    named = 0
    for name in shipped_cards("models"):
        t = load_recipe(name).teacher
        if t.shipped is not None:
            named += 1
            f = check_shipped(t)
            prov = json.loads(f.with_suffix(".json").read_text())
            assert prov["sha256"] == t.shipped.sha256 and "teacher.retrain=true" in prov["reproduce"]
    if not named:
        pytest.skip("no shipped recipe names shipped teacher weights yet")


def _ship_script():
    from tests.conftest import benchmark_script

    return benchmark_script("ship_teacher")


def test_ship_script_writes_weights_a_card_can_verify_and_refuses_quick_builds(shipped, tmp_path, capsys, no_training):
    build = shipped["trained"].dir.parent  # the fixture's plain-card build (teacher stage only)
    dest = tmp_path / "cards" / "weights" / "t.safetensors"
    assert _ship_script().main([str(build), str(dest)]) == 0
    prov = json.loads(dest.with_suffix(".json").read_text())
    assert prov["sha256"] == sha256(dest) == sha256(shipped["weights"])  # same tensors, same bytes
    assert prov["measured"]["test_accuracy"] == shipped["trained"].metrics["test_accuracy"] and prov["epochs_run"] == 3
    assert "--set teacher.retrain=true" in prov["reproduce"] and "ship_teacher.py" in prov["reproduce"]
    assert f"sha256: {sha256(dest)}" in capsys.readouterr().out
    card = write_card(tmp_path / "cards", {"path": "weights/t.safetensors", "sha256": prov["sha256"]})
    assert teacher_stage(card, tmp_path / "b", tmp_path / "cache").metrics["origin"] == "shipped"
    run_json = build / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "quick": True}))
    try:
        with pytest.raises(SystemExit, match="--quick"):
            _ship_script().main([str(build), str(tmp_path / "q.safetensors")])
    finally:
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "quick": False}))


def test_report_note_says_where_the_teacher_came_from():
    from edgekd.report.build import teacher_origin_note

    sha = "ab" * 32
    note = teacher_origin_note({"origin": "shipped", "shipped": {"path": "weights/t.safetensors", "sha256": sha}})
    assert note.startswith(f"Teacher: shipped weights weights/t.safetensors (sha256 {sha}), verified")
    assert "--set teacher.retrain=true" in note
    assert teacher_origin_note({"origin": "trained", "history": [{}], "train_seconds": 3.2}) == \
        "Teacher: trained by the recipe's teacher.train (1 epoch, 3 s) in this build."
    assert "taken from the teacher cache" in teacher_origin_note({"history": [{}, {}], "cached": True})  # older results
    assert teacher_origin_note({"given": True, "source": "onnx:t.onnx"}).startswith("Teacher: used as given (onnx:t.onnx)")


def test_overriding_the_shipped_teachers_settings_asks_for_retrain(shipped):
    card = str(shipped["card"])
    with pytest.raises(ConfigError, match=r"--set teacher.train.epochs changes the teacher whose weights ship") as e:
        load_recipe(card, {"teacher.train.epochs": 8})
    assert e.value.exit_code == 2 and "--set teacher.retrain=true" in e.value.hint
    with pytest.raises(ConfigError, match="--set teacher.kwargs.hidden"):
        load_recipe(card, {"teacher.kwargs.hidden": [64]})
    assert load_recipe(card, {"teacher.train.epochs": 8, "teacher.retrain": True}).teacher.train.epochs == 8
    assert not load_recipe(card, {"teacher.shipped": None}).teacher.uses_shipped  # dropping the weights is fine
    assert load_recipe(card, {"distill.epochs": 2}).teacher.uses_shipped  # the student's settings are not the teacher's
    # a quick block that changes the teacher must ask for its own training
    raw = yaml.safe_load(shipped["card"].read_text())
    raw["quick"] = {"teacher.train.epochs": 1}
    q = shipped["card"].with_name("quick.yaml")
    q.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="its quick block sets teacher.train.epochs") as e:
        load_recipe(str(q), quick=True)
    assert "teacher.retrain: true" in e.value.hint
    assert load_recipe(str(q)).teacher.uses_shipped  # without --quick the block does not apply
    raw["quick"]["teacher.retrain"] = True
    q.write_text(yaml.safe_dump(raw))
    assert load_recipe(str(q), quick=True).teacher.train.epochs == 1
