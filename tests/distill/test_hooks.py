"""FeatureCapture: capture by module path, detaching, hook removal, unknown-path errors, tuple outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.distill.hooks import FeatureCapture, select
from edgekd.errors import ConfigError


class Pair(nn.Module):
    """Returns a tuple like a Hugging Face layer: (hidden, attention-like)."""

    def forward(self, x: torch.Tensor):
        return x * 2, torch.softmax(x, dim=-1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])})
        self.act = nn.ReLU()  # shared: called after each layer
        self.pair = Pair()
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.encoder["layer"][0](x))
        h = self.act(self.encoder["layer"][1](h))
        h, _ = self.pair(h)
        return self.head(h)


def test_captures_outputs_by_path():
    m = Tiny()
    x = torch.randn(3, 4)
    with FeatureCapture(m, ["encoder.layer.0", "encoder.layer.1", "act", "pair", "head"]) as cap:
        out = m(x)
    l0 = m.encoder["layer"][0](x)
    l1 = m.encoder["layer"][1](torch.relu(l0))
    torch.testing.assert_close(cap.features["encoder.layer.0"], l0)
    torch.testing.assert_close(cap.features["encoder.layer.1"], l1)
    torch.testing.assert_close(cap.features["act"], torch.relu(l1))  # a shared module keeps its LAST call
    torch.testing.assert_close(cap.features["head"], out)
    hidden, probs = cap.features["pair"]
    torch.testing.assert_close(hidden, 2 * torch.relu(l1))
    torch.testing.assert_close(select(cap.features["pair"], 1), probs)
    assert cap.features["encoder.layer.0"].requires_grad  # student captures keep the graph


def test_detach_for_teacher_and_tuples():
    m = Tiny()
    with FeatureCapture(m, ["encoder.layer.0", "pair"], detach=True) as cap:
        m(torch.randn(2, 4))
    assert not cap.features["encoder.layer.0"].requires_grad
    assert all(not t.requires_grad for t in cap.features["pair"])


def test_hooks_removed_on_exit_and_missing_modules_reported():
    m = Tiny()
    cap = FeatureCapture(m, ["encoder.layer.1", "unused"])
    with cap:
        m(torch.randn(2, 4))
    first = cap.features["encoder.layer.1"]
    assert cap.missing() == ["unused"]
    assert all(not mod._forward_hooks for mod in m.modules())
    m(torch.randn(2, 4))  # outside the context: nothing recorded any more
    assert cap.features["encoder.layer.1"] is first


def test_unknown_path_lists_near_matches():
    with pytest.raises(ConfigError) as e:
        FeatureCapture(Tiny(), ["encoder.layers.1"])
    assert "encoder.layers.1" in e.value.message
    assert "encoder.layer.1" in e.value.hint
    with pytest.raises(ConfigError) as e:  # nothing close: the hint lists the model's paths
        FeatureCapture(Tiny(), ["zzz"])
    assert "encoder.layer.0" in e.value.hint and "head" in e.value.hint


def test_select_errors():
    t = torch.zeros(2)
    assert select(t) is t
    with pytest.raises(ConfigError, match="index 1"):
        select(t, 1)
    with pytest.raises(ConfigError, match="out of range"):
        select((t, t), 2)
    with pytest.raises(ConfigError, match="NoneType"):
        select((t, None), 1)  # e.g. attention weights not returned by the layer
