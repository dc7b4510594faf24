"""MLPs for flat features (digits 8×8 → 64 inputs): a plain MLP and an ensemble teacher whose
logits are the mean of its members' logits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MLPConfig:
    in_features: int = 64
    num_classes: int = 10
    hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0


class MLP(nn.Module):
    """Layers `layer1..layerN` (Linear+ReLU[+Dropout]), `pool` (identity: the last hidden), `fc`."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        cfg = MLPConfig(**kwargs)
        self.config = cfg
        cin = cfg.in_features
        for i, h in enumerate(cfg.hidden):
            mods: list[nn.Module] = [nn.Linear(cin, h), nn.ReLU()]
            if cfg.dropout:
                mods.append(nn.Dropout(cfg.dropout))
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
            cin = h
        self.n_layers = len(cfg.hidden)
        self.pool = nn.Identity()
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.pool(x))


class MLPEnsemble(nn.Module):
    """Mean of `members` independent MLPs' logits (members are `members.0`, `members.1`, …)."""

    def __init__(self, members: int = 3, **kwargs) -> None:
        super().__init__()
        self.members = nn.ModuleList(MLP(**kwargs) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)
