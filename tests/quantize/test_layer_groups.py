"""The language-model accuracy-aware loop: quantized nodes grouped across layers (sensitivity.layer_groups), and
whole groups kept in FP32, the most sensitive first, until the candidate is within budget (text_generation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekd.quantize.candidates import CANDIDATES
from edgekd.quantize.sensitivity import layer_groups


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return torch.relu(self.q_proj(x))


class _MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.down_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.down_proj(x)


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.self_attn, self.mlp = _Attn(d), _MLP(d)

    def forward(self, x):
        return x + self.mlp(self.self_attn(x))


class _TinyLM(nn.Module):
    """Two layers named like a HF decoder (layers.N.self_attn.q_proj, layers.N.mlp.down_proj) and a head."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(d), _Block(d)])
        self.lm_head = nn.Linear(d, 8, bias=False)

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return self.lm_head(x)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("lm")
    fp32 = d / "fp32.onnx"
    torch.onnx.export(_TinyLM().eval(), (torch.randn(1, 4, 32),), str(fp32), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    q = d / "int8.onnx"
    CANDIDATES["int8-dynamic"].make(fp32, q, None, {}, [])
    return fp32, q


def _fp32_matmuls(path: Path) -> set[str]:
    return {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}


def test_layer_groups_name_one_projection_across_layers(tiny_lm):
    _, q = tiny_lm
    groups = layer_groups(onnx.load(str(q)))
    assert groups == {"/layers.*/self_attn/q_proj/MatMul": ["/layers.0/self_attn/q_proj/MatMul",
                                                            "/layers.1/self_attn/q_proj/MatMul"],
                      "/layers.*/mlp/down_proj/MatMul": ["/layers.0/mlp/down_proj/MatMul",
                                                         "/layers.1/mlp/down_proj/MatMul"],
                      "/lm_head/MatMul": ["/lm_head/MatMul"]}
    # the names are what nodes_to_exclude takes: excluding a group leaves exactly its nodes in FP32
    fp32, _ = tiny_lm
    out = q.with_name("excl.onnx")
    CANDIDATES["int8-dynamic"].make(fp32, out, None, {"nodes_to_exclude": groups["/layers.*/mlp/down_proj/MatMul"]}, [])
    assert _fp32_matmuls(out) == set(groups["/layers.*/mlp/down_proj/MatMul"])


def test_the_loop_keeps_the_group_that_recovers_agreement(tiny_lm, tmp_path):
    """A stand-in evaluation that scores a graph by which MatMuls it left in FP32 (the down projections are the
    sensitive kind, as in SmolLM2): the search ranks the groups, keeps down_proj first, and stops within budget."""
    import shutil

    from edgekd.quantize.budget import Budget
    from edgekd.quantize.candidates import keep_groups_fp32

    fp32, q = tiny_lm
    score = {"down_proj": 0.10, "q_proj": 0.01, "lm_head": 0.005}
    evaluated: list[Path] = []

    def agreement(path) -> float:
        kept = _fp32_matmuls(Path(path))
        return 0.38 + sum(v / 2 for k, v in score.items() for n in kept if k in n)

    def fake_agreement(path) -> float:
        evaluated.append(Path(path))
        return agreement(path)

    ranked: list[Path] = []

    def fake_rank(path) -> float:
        ranked.append(Path(path))
        return agreement(path)

    dst = tmp_path / "cand.onnx"
    shutil.copy(q, dst)
    notes: list[str] = []
    first = fake_agreement(dst)
    evaluated.clear()
    rep = keep_groups_fp32("int8-dynamic", fp32, dst, {}, fake_agreement, reference=0.50, initial=first,
                           budget=Budget(2.0, metric="next-token agreement"), rank_evaluate=fake_rank, notes=notes)
    assert rep["initial_accuracy"] == pytest.approx(0.38) and rep["groups"] == 3
    assert rep["ranking"][0]["group"] == "/layers.*/mlp/down_proj/MatMul"
    # down_proj alone: 0.48, within 2 points of 0.50 -> one step
    assert rep["kept_fp32_groups"] == ["/layers.*/mlp/down_proj/MatMul"] and len(rep["steps"]) == 1
    assert rep["within_budget"] and rep["steps"][0]["accuracy"] == pytest.approx(0.48)
    assert _fp32_matmuls(dst) == {"/layers.0/mlp/down_proj/MatMul", "/layers.1/mlp/down_proj/MatMul"}
    assert not list(tmp_path.glob("*.trial.onnx")) and "kept in FP32" in notes[0]
    # the full evaluation sees only the candidate itself (callers keep its last result); ranking uses trial files
    assert evaluated == [dst] and len(ranked) == 3 and dst not in ranked
    # a tighter budget takes more groups, and gives up after max_exclusion_steps, saying it did not fit
    shutil.copy(q, dst)
    rep = keep_groups_fp32("int8-dynamic", fp32, dst, {"max_exclusion_steps": 2}, fake_agreement, reference=0.50,
                           initial=first, budget=Budget(0.1), rank_evaluate=fake_rank)
    assert rep["kept_fp32_groups"] == ["/layers.*/mlp/down_proj/MatMul", "/layers.*/self_attn/q_proj/MatMul"]
    assert not rep["within_budget"] and len(rep["kept_fp32_nodes"]) == 4
    assert rep["steps"][-1]["accuracy"] == pytest.approx(0.49)
