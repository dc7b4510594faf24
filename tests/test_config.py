from pathlib import Path

import pytest

from edgekd.cards import load_recipe, load_target, shipped
from edgekd.config import RecipeConfig, apply_overrides, parse_value
from edgekd.errors import ConfigError


def test_shipped_cards_validate():
    assert {"fashion-cnn", "digits-mlp"} <= set(shipped("models"))
    assert "cpu" in shipped("targets")
    for name in shipped("models"):
        assert load_recipe(name).name == name
    for name in shipped("targets"):
        assert load_target(name).name == name


def test_overrides_are_typed():
    r = load_recipe("fashion-cnn", {"distill.epochs": parse_value("3"), "quantize.accuracy_budget": parse_value("0.25"),
                                    "quantize.candidates": parse_value("[fp32, int8-dynamic]")})
    assert r.distill.epochs == 3 and isinstance(r.distill.epochs, int)
    assert r.quantize.accuracy_budget == 0.25
    assert r.quantize.candidates == ["fp32", "int8-dynamic"]


def test_quick_applies_recipe_block_then_user_overrides():
    r = load_recipe("fashion-cnn", {"distill.epochs": 1}, quick=True)
    assert r.data.train_size == 10000 and r.distill.epochs == 1
    t = load_target("cpu", quick=True)
    assert t.profile.min_runs < load_target("cpu").profile.min_runs
    # the user's --set wins over the target's quick table too (it was silently overridden)
    t2 = load_target("cpu", {"target.profile.min_runs": 7, "target.profile.threads": 2}, quick=True)
    assert (t2.profile.min_runs, t2.profile.threads) == (7, 2)
    assert t2.profile.min_seconds == t.profile.min_seconds == t.profile.quick["min_seconds"]
    t3 = load_target("cpu", {"target.profile.quick.min_runs": 5}, quick=True)
    assert t3.profile.min_runs == 5


def test_control_on_for_full_builds_off_for_quick_unless_set(tmp_path):
    assert load_recipe("digits-mlp").distill.control is True
    assert load_recipe("digits-mlp", quick=True).distill.control is False
    assert load_recipe("digits-mlp", {"distill.control": parse_value("true")}, quick=True).distill.control is True
    # a recipe's own quick block may keep the control on; --set still wins over it
    card = tmp_path / "r.yaml"
    text = (Path(__file__).resolve().parents[1] / "models" / "digits-mlp.yaml").read_text()
    card.write_text(text.replace("quick:\n", "quick:\n  distill.control: true\n"))
    assert load_recipe(str(card), quick=True).distill.control is True
    assert load_recipe(str(card), {"distill.control": False}, quick=True).distill.control is False


def test_augmented_cache_needs_views_and_views_need_augmentation():
    with pytest.raises(ConfigError, match="teacher_cache.views=K"):  # fashion-cnn caches un-augmented logits
        load_recipe("fashion-cnn", {"distill.augment": True})
    r = load_recipe("fashion-cnn", {"distill.augment": True, "distill.teacher_cache.views": 8})
    assert r.distill.teacher_cache.views == 8
    with pytest.raises(ConfigError, match="needs distill.augment=true"):
        load_recipe("fashion-cnn", {"distill.teacher_cache.views": 8})
    with pytest.raises(ConfigError, match="needs distill.augment=true"):
        load_recipe("digits-mlp", {"distill.augment": True, "distill.teacher_cache.views": 2})  # no cache enabled


def test_unknown_set_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_recipe("fashion-cnn", {"distill.epoch": 3})
    assert e.value.exit_code == 2
    assert "distill.epochs" in e.value.hint


def test_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="distill.epochs"):
        load_recipe("fashion-cnn", {"distill.epochs": "many"})


def test_unknown_card_key_in_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text((shipped("models")["fashion-cnn"]).read_text().replace("val_fraction:", "val_fractoin:"))
    with pytest.raises(ConfigError) as e:
        load_recipe(str(p))
    assert "val_fractoin" in e.value.message and "val_fraction" in e.value.hint


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n  data: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(p))


def test_unknown_names_suggest():
    with pytest.raises(ConfigError) as e:
        load_recipe("fashion-cn")
    assert "fashion-cnn" in e.value.hint
    with pytest.raises(ConfigError) as e:
        load_target("cpuu")
    assert "cpu" in e.value.hint


def test_schema_version_checked(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text((shipped("models")["digits-mlp"]).read_text().replace("schema_version: 1", "schema_version: 9"))
    with pytest.raises(ConfigError, match="schema_version"):
        load_recipe(str(p))


def test_target_override_via_prefix():
    t = load_target("cpu", {"target.profile.threads": 2})
    assert t.profile.threads == 2


def test_apply_overrides_allows_free_kwargs():
    raw = {"teacher": {"arch": "mlp", "kwargs": {}}}
    out = apply_overrides(raw, {"teacher.kwargs.hidden": [8]}, RecipeConfig)
    assert out["teacher"]["kwargs"]["hidden"] == [8] and raw["teacher"]["kwargs"] == {}
