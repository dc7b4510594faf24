"""Which quantization candidates a target ships: each family's declaration, checked against what
its converter takes (Ascend: the ATC operator lint on real candidate graphs); the merge rule of the
recipe's list, the card's list and an explicit --set; the report rows of candidates not built."""
from __future__ import annotations

import io
import json
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekd.cards import load_recipe, load_target
from edgekd.config import TargetConfig
from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext
from edgekd.quantize.candidates import CANDIDATES, OTHER_KINDS, candidate_kind
from edgekd.report.build import not_built_note, not_built_rows
from edgekd.report.markdown import render_markdown
from edgekd.report.schema import check_report
from edgekd.targets import family, split_candidates
from edgekd.tasks.classification import candidate_plan, graph

ROOT = Path(__file__).resolve().parents[2]
ALL = list(CANDIDATES) + list(OTHER_KINDS)
INT8 = ["int8-dynamic", "int8-qdq", "int8-weight", "int4-weight"]


# --------------------------------------------------------------------------- the families' declarations


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory):
    """An MLP exported at the Ascend cards' opset (13)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    path = tmp_path_factory.mktemp("cands") / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 64),), str(path), opset_version=13, input_names=["input"],
                          output_names=["logits"], dynamo=False)
    return path


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8-dynamic", "int8-qdq", "int4-weight"])
def test_ascend_refuses_exactly_the_kinds_whose_graphs_atc_cannot_parse(name, mlp_onnx):
    """One candidate of each kind, made for real and linted against CANN's ONNX op table: every
    kind the Ascend family declares unshippable for want of a parser has lint findings, and its
    reason names the ops the lint found; fp32 passes. fp16 parses, and is refused for another
    reason (the NPU's FP16 is ATC's precision_mode on the FP32 graph)."""
    from edgekd.targets.ascend.bundle import lint
    from edgekd.quantize import make_candidate

    if CANDIDATES[name].kind == "weight-only":
        pytest.importorskip("nncf")
    out = mlp_onnx.parent / f"{name}.onnx"
    calib = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    make_candidate(name, mlp_onnx, out, calib, {})
    findings = lint(out)
    refused = family(load_target("ascend-310p")).cannot_ship
    kind = candidate_kind(name)
    if name in ("fp32", "fp16"):
        assert findings == []
        assert (kind in refused) == (name == "fp16")
        if name == "fp16":
            assert "precision_mode" in refused["fp16"]
        return
    assert findings and kind in refused
    for op in {f.op_type for f in findings}:
        assert op in refused[kind], (op, refused[kind])


def test_cpu_cuda_and_mobile_ship_every_kind_ascend_only_fp32():
    for card in ("cpu", "cuda", "mobile"):
        assert split_candidates(load_target(card), ALL) == (ALL, []), card
    for card in ("ascend-310p", "ascend-910b"):
        kept, dropped = split_candidates(load_target(card), ALL)
        assert kept == ["fp32"]
        assert [d["variant"] for d in dropped] == ALL[1:]
        assert all(d["kind"] == candidate_kind(d["variant"]) and d["reason"] for d in dropped)
    # int8-qat exports a QDQ graph: refused on Ascend with the static kind's reason
    assert next(d for d in split_candidates(load_target("ascend-310p"), ALL)[1] if d["variant"] == "int8-qat")["kind"] == "static"


def test_unknown_candidate_name_is_still_a_config_error():
    with pytest.raises(ConfigError, match="unknown quantization candidate 'int8-dynamik'") as e:
        split_candidates(load_target("ascend-310p"), ["fp32", "int8-dynamik"])
    assert "int8-dynamic" in e.value.hint


def test_a_card_listing_a_candidate_its_family_cannot_ship_exits_2():
    from edgekd.targets import check

    raw = tomllib.loads((ROOT / "targets" / "ascend-310p.toml").read_text())
    raw["candidates"] = ["fp32", "int8-qdq"]
    with pytest.raises(ConfigError) as e:
        check(TargetConfig.model_validate(raw))
    assert e.value.exit_code == 2
    assert "lists candidate int8-qdq, which a ascend target cannot ship" in e.value.message
    assert "QuantizeLinear" in e.value.message and "ships fp32" in e.value.hint


# --------------------------------------------------------------------------- the merge rule


@pytest.fixture
def recipe_with_int8(tmp_path):
    """digits-mlp with its own candidate list, as minilm-sentiment has (a recipe is written for any target)."""
    text = (ROOT / "models" / "digits-mlp.yaml").read_text()
    path = tmp_path / "digits-int8.yaml"
    path.write_text(text.replace("quantize:\n", f"quantize:\n  candidates: [fp32, {', '.join(INT8)}]\n", 1))
    return path


def _ctx(tmp_path, recipe, target, sets=None):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=80)  # narrow: the notice must still be one line
    sets = sets or {}
    return BuildContext(out=tmp_path / "b", recipe=load_recipe(str(recipe), sets), target=load_target(target, sets),
                        recipe_ref=str(recipe), target_ref=target, overrides=sets, console=console)


def test_the_recipes_list_replaces_the_cards_and_the_target_filters_it(tmp_path, recipe_with_int8):
    assert candidate_plan(_ctx(tmp_path, recipe_with_int8, "cpu")) == (["fp32", *INT8], [])
    ctx = _ctx(tmp_path, recipe_with_int8, "ascend-310p")
    kept, dropped = candidate_plan(ctx)
    assert kept == ["fp32"] and [d["variant"] for d in dropped] == INT8
    # the quantize stage's config (computed at pre-flight and for every key) builds only fp32 and
    # says so in one line, once
    quantize = next(s for s in graph() if s.name == "quantize")
    assert quantize.config(ctx)["candidates"] == ["fp32"]
    quantize.config(ctx)
    lines = ctx.console.file.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("target ascend-310p: not building int8-dynamic, int8-qdq, int8-weight, int4-weight (")
    assert "DynamicQuantizeLinear" in lines[0] and "MatMulNBits" in lines[0] and lines[0].endswith("building fp32")
    # without a recipe list the card's own ([fp32] on Ascend) is used and nothing is said
    plain = _ctx(tmp_path, ROOT / "models" / "digits-mlp.yaml", "ascend-310p")
    assert candidate_plan(plain) == (["fp32"], []) and quantize.config(plain)["candidates"] == ["fp32"]
    assert plain.console.file.getvalue() == ""


@pytest.mark.parametrize("value", [["int8-dynamic"], ["fp32", "int8-qdq"], ["int8-qat"]])
def test_an_explicit_set_the_target_cannot_ship_is_a_one_line_error(tmp_path, value):
    ctx = _ctx(tmp_path, ROOT / "models" / "digits-mlp.yaml", "ascend-310p", {"quantize.candidates": value})
    with pytest.raises(ConfigError) as e:
        next(s for s in graph() if s.name == "quantize").config(ctx)
    bad = [v for v in value if v != "fp32"]
    assert e.value.exit_code == 2 and "\n" not in e.value.message
    assert e.value.message.startswith(f"--set quantize.candidates: {', '.join(bad)} cannot ship on target 'ascend-310p'")
    assert "--target cpu" in e.value.hint and "AMCT" in e.value.hint
    # what the target can take is accepted as given
    ok = _ctx(tmp_path, ROOT / "models" / "digits-mlp.yaml", "ascend-310p", {"quantize.candidates": ["fp32"]})
    assert candidate_plan(ok) == (["fp32"], [])
    # and on cpu the same --set builds
    cpu = _ctx(tmp_path, ROOT / "models" / "digits-mlp.yaml", "cpu", {"quantize.candidates": value})
    assert candidate_plan(cpu)[1] == []


# --------------------------------------------------------------------------- report rows


def test_not_built_rows_meet_the_contract_and_show_their_reason():
    report = json.loads((ROOT / "tests" / "fixtures" / "report_fixture.json").read_text())
    _, dropped = split_candidates(load_target("ascend-310p"), ["fp32", "int8-dynamic", "int8-qdq"])
    report["candidates"] += not_built_rows(dropped)
    report["notes"].append(not_built_note("ascend-310p", dropped))
    assert check_report(report) == []
    rows = [c for c in report["candidates"] if c["status"] == "unsupported-on-target"]
    assert [c["variant"] for c in rows] == ["int8-dynamic", "int8-qdq"]
    assert all(c["reason"].startswith("ATC has no parser") and c["path"] is None for c in rows)
    md = render_markdown(report)
    assert "| int8-dynamic | onnx | unsupported-on-target |" in md
    assert "Not built for ascend-310p (unsupported-on-target): int8-dynamic: ATC has no parser for " \
           "DynamicQuantizeLinear/MatMulInteger; int8-qdq: ATC has no parser for QuantizeLinear/DequantizeLinear." in md
