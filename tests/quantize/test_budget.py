"""THE accuracy budget (quantize/budget.py) and THE keep-in-FP32 search (sensitivity.keep_fp32_search)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgekd.errors import ConfigError
from edgekd.quantize.budget import Budget
from edgekd.quantize.select import within_budget
from edgekd.quantize.sensitivity import keep_fp32_search

# --------------------------------------------------------------------------- Budget


def test_higher_is_better_and_the_boundary_is_within():
    b = Budget(0.5)
    assert b.within(0.9, 0.9) and b.within(0.9, 0.95)  # better than the reference is always within
    # 0.9 - 0.895 is 0.0050000000000000044 in floats: a drop of exactly the budget must still count as within
    assert 0.9 - 0.895 > 0.005 and b.within(0.9, 0.895)
    assert not b.within(0.9, 0.8949)  # one hundredth of a point past it is not
    assert b.drop_points(0.9, 0.895) == pytest.approx(0.5)
    assert Budget(0.0).within(0.5, 0.5) and not Budget(0.0).within(0.5, 0.4999)


def test_lower_is_better_flips_the_direction():
    b = Budget(1.0, metric="error rate", direction="lower")
    assert b.within(0.10, 0.11) and not b.within(0.10, 0.1101) and b.within(0.10, 0.02)
    assert b.drop_points(0.10, 0.11) == pytest.approx(1.0)
    assert sorted([0.3, 0.1, 0.2], key=b.best_first) == [0.1, 0.2, 0.3]
    assert sorted([0.3, 0.1, 0.2], key=Budget(1.0).best_first) == [0.3, 0.2, 0.1]


def test_slack_is_a_parameter_and_bad_budgets_are_config_errors():
    assert not Budget(0.5, slack=0.0).within(0.9, 0.895)  # the slack is what makes the float boundary within
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError) as e:
            Budget(bad)
        assert e.value.exit_code == 2
    with pytest.raises(ConfigError):
        Budget(1.0, direction="up")  # type: ignore[arg-type]


def test_the_old_name_is_the_budget():
    for ref, acc, pts in [(0.9, 0.895, 0.5), (0.9, 0.8949, 0.5), (0.5, 0.5, 0.0), (0.8, 0.7, 5.0)]:
        assert within_budget(ref, acc, pts) == Budget(pts).within(ref, acc)


def test_from_recipe_reads_the_recipes_budget():
    from edgekd.config import QuantizeConfig

    b = Budget.from_recipe(QuantizeConfig(accuracy_budget=2.0), metric="next-token agreement")
    assert (b.points, b.metric, b.direction) == (2.0, "next-token agreement", "higher")


def test_sensitivity_method_is_a_closed_set_at_card_load():
    from edgekd.cards import load_recipe
    from edgekd.config import SENSITIVITY_METHODS

    assert set(SENSITIVITY_METHODS) == {"exclusion", "layer-error"}
    with pytest.raises(ConfigError) as e:
        load_recipe("digits-mlp", overrides={"quantize.options.sensitivity_method": "exclusoin"})
    assert e.value.exit_code == 2
    assert "exclusoin" in e.value.message and "exclusion" in e.value.message and "layer-error" in e.value.message
    for ok in SENSITIVITY_METHODS:
        r = load_recipe("digits-mlp", overrides={"quantize.options.sensitivity_method": ok})
        assert r.quantize.options["sensitivity_method"] == ok
    # and the typed options (pre-flight, and every make_candidate) agree on the same set
    from edgekd.quantize.candidates import check_options

    with pytest.raises(ConfigError):
        check_options({"sensitivity_method": "layer_error"})
    assert check_options({"sensitivity_method": "layer-error"}) == {"sensitivity_method": "layer-error"}


# --------------------------------------------------------------------------- the search

NODES = ["g0", "g1", "g2", "g3"]


def _tiny_graph() -> onnx.ModelProto:
    """x -> g0 -> g1 -> g2 -> g3 -> y (four Relus): the nodes the search may keep in FP32."""
    names = ["x", "h0", "h1", "h2", "y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=n) for i, n in enumerate(NODES)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _build(keep: list[str], path: Path) -> None:
    """Write the tiny graph with `keep` marked as FP32 (what a real builder would leave unquantized)."""
    m = _tiny_graph()
    for n in m.graph.node:
        if n.name in keep:
            n.doc_string = "fp32"
    onnx.save(m, str(path))


def _kept(path: Path) -> set[str]:
    return {n.name for n in onnx.load(str(path)).graph.node if n.doc_string == "fp32"}


def _score(kept: set[str]) -> float:
    """A fake validation accuracy: g2 recovers most alone; g0 only helps once g2 is kept (not additive)."""
    s = 0.70 + (0.15 if "g2" in kept else 0) + (0.04 if "g1" in kept else 0) + (0.01 if "g3" in kept else 0)
    return s + (0.08 if {"g0", "g2"} <= kept else 0)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    p = tmp_path / "cand.onnx"
    _build([], p)
    return p


def test_greedy_reranks_each_step_and_stops_within_budget(out: Path):
    full: list[Path] = []

    def evaluate(p: Path) -> float:
        full.append(Path(p))
        return _score(_kept(p))

    res = keep_fp32_search({n: [n] for n in NODES}, _build, evaluate, out, reference=0.95, initial=0.70,
                           budget=Budget(1.0), max_steps=4)
    # step 1: g2 (+0.15) beats g1 (+0.04); step 2: with g2 kept, g0 is worth +0.08 and wins -> 0.93, still over;
    # step 3: g1 -> 0.97, within 1 point of 0.95
    assert res.kept_groups == ["g2", "g0", "g1"] and res.within_budget
    assert [s["accuracy"] for s in res.steps] == pytest.approx([0.85, 0.93, 0.97])
    assert res.ranking[0] == {"group": "g2", "nodes": 1, "score": pytest.approx(0.85)}
    assert [r["group"] for r in res.ranking][-1] == "g0"  # alone it recovers nothing: ranked last at step 1
    assert _kept(out) == {"g2", "g0", "g1"} and res.score == pytest.approx(0.97)
    # without a separate rank_evaluate, ranking uses the same evaluator on a scratch file: 4 + 3 + 2 tries
    assert full.count(out) == 3 and len(full) == 3 + 9 and set(full) == {out, out.with_name("cand.trial.onnx")}
    assert not list(out.parent.glob("*.trial.onnx"))


def test_max_steps_base_nodes_and_a_fixed_order(out: Path):
    def evaluate(p: Path) -> float:
        return _score(_kept(p))

    # never within a 0-point budget of 1.0: gives up after two steps, base nodes always kept and listed first
    res = keep_fp32_search({n: [n] for n in NODES if n != "g3"}, _build, evaluate, out, reference=1.0,
                           initial=0.71, budget=Budget(0.0), max_steps=2, base=["g3"])
    assert not res.within_budget and len(res.steps) == 2 and res.kept_nodes == ["g3", "g2", "g0"]
    # a fixed order (ranked elsewhere) is followed as given, and nothing is tried on scratch files
    ranked: list[Path] = []
    res = keep_fp32_search({n: [n] for n in NODES}, _build, evaluate, out, reference=0.95, initial=0.70,
                           budget=Budget(10.0), max_steps=4, order=["g1", "g2", "g0"],
                           rank_evaluate=lambda p: ranked.append(p) or 0.0)
    assert res.kept_groups == ["g1", "g2"] and res.within_budget and ranked == [] and res.ranking == []


def test_groups_keep_all_their_nodes_and_within_budget_does_nothing(out: Path):
    calls: list[Path] = []

    def evaluate(p: Path) -> float:
        calls.append(p)
        return _score(_kept(p))

    groups = {"early": ["g0", "g1"], "late": ["g2", "g3"]}
    res = keep_fp32_search(groups, _build, evaluate, out, reference=0.95, initial=0.70, budget=Budget(10.0),
                           max_steps=3)
    assert res.kept_groups == ["late"] and res.kept_nodes == ["g2", "g3"] and res.within_budget
    assert res.steps == [{"kept_fp32": "late", "nodes": 2, "accuracy": pytest.approx(0.86)}]
    calls.clear()
    res = keep_fp32_search(groups, _build, evaluate, out, reference=0.95, initial=0.949, budget=Budget(0.1),
                           max_steps=3)
    assert res.within_budget and res.steps == [] and res.kept_nodes == [] and calls == []


def test_lower_is_better_scores_rank_the_other_way(out: Path):
    def error(p: Path) -> float:
        return 1.0 - _score(_kept(p))

    res = keep_fp32_search({n: [n] for n in NODES}, _build, error, out, reference=0.05, initial=0.30,
                           budget=Budget(10.0, metric="error", direction="lower"), max_steps=4)
    assert res.kept_groups == ["g2"] and res.within_budget and res.score == pytest.approx(0.15)
