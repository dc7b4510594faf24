"""Multi-teacher distillation: several teachers as one module whose logits are their (weighted) mean.

Members are addressable as `members.0`, `members.1`, … so feature losses can still hook a member."""
from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import ConfigError


class WeightedEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float] | None = None) -> None:
        super().__init__()
        if weights is not None and len(weights) != len(members):
            raise ConfigError(f"distill.teacher_weights has {len(weights)} weights for {len(members)} teachers",
                              hint="give one weight per teacher: [teacher, *extra_teachers]")
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if (w < 0).any() or float(w.sum()) <= 0:
            raise ConfigError("distill.teacher_weights must be non-negative with a positive sum", hint="e.g. [0.7, 0.3]")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x) for m in self.members])  # [T, B, C]
        return (self.weights.view(-1, 1, 1) * logits).sum(0)
