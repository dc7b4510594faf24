"""Convolutional classifiers for small images (Fashion-MNIST class): a ResNet-style teacher and a
tiny student. Both end in a named `pool` (global average pool output) and `fc` head, so feature
and relation losses can address them by module path."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.short(x))


@dataclass
class ResNetCNNConfig:
    in_channels: int = 1
    num_classes: int = 10
    stem_width: int = 32
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    blocks_per_stage: int = 1
    first_stride: int = 2  # stage 1 runs at half resolution: most of the compute saved, little accuracy lost
    dropout: float = 0.1


class ResNetCNN(nn.Module):
    """ResNet-style teacher: stem, then stages `layer1..layerN` of residual blocks, `pool`, `fc`."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        cfg = ResNetCNNConfig(**kwargs)
        self.config = cfg
        w0 = cfg.stem_width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU())
        cin = w0
        for i, w in enumerate(cfg.widths):
            stride = cfg.first_stride if i == 0 else 2
            blocks = [_Block(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(cfg.blocks_per_stage)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.n_stages = len(cfg.widths)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.drop(self.pool(x)))


@dataclass
class SmallCNNConfig:
    in_channels: int = 1
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [16, 32, 48])
    hidden: int = 0
    # stride of the first convolution: a large image is downsampled at the stem, as MobileNet/EfficientNet stems do
    stem_stride: int = 1


class SmallCNN(nn.Module):
    """Tiny student: conv-bn-relu-maxpool stages `layer1..layerN`, `pool`, optional hidden, `fc`."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        cfg = SmallCNNConfig(**kwargs)
        self.config = cfg
        cin = cfg.in_channels
        for i, w in enumerate(cfg.widths):
            stride = cfg.stem_stride if i == 0 else 1
            layers: list[nn.Module] = [nn.Conv2d(cin, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < len(cfg.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = w
        self.n_stages = len(cfg.widths)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(cin, cfg.hidden), nn.ReLU()) if cfg.hidden else nn.Identity()
        self.fc = nn.Linear(cfg.hidden or cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.hidden(self.pool(x)))
