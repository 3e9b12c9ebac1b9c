"""Multi-layer perceptron on flattened images (DC's MLP: two hidden layers of 128)."""

from __future__ import annotations

import math

import torch
from torch import nn

from distilset.nets.registry import register_net


class MLP(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 128, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        dim = math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(dim, width), nn.ReLU(inplace=True)]
            dim = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(dim, num_classes)
        self.feature_dim = dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_net("mlp")
def mlp(in_shape, num_classes, **kw) -> MLP:
    """MLP, 2 hidden layers of width 128; options width/depth."""
    return MLP(in_shape, num_classes, **kw)
