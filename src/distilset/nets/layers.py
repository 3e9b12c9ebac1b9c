"""Small building blocks shared by the networks: normalisation and pooling layers chosen by name."""

from __future__ import annotations

import torch
from torch import nn

from distilset.errors import DistilsetError

NORMS = ("instance", "batch", "layer", "none")
POOLS = ("avg", "max", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``instance`` is DC's instance norm: GroupNorm with one group per channel, affine."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise DistilsetError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")


def pool_layer(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AvgPool2d(2, 2)
    if kind == "max":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return nn.Identity()
    raise DistilsetError(f"unknown pooling {kind!r}; choose from {', '.join(POOLS)}")


class ConvThenDense(nn.Module):
    """Conv ``features``, then two dense ReLU layers of ``widths`` (the embedding), then the classifier: the plan of
    Dataset Distillation's LeNet and AlexCifarNet. A subclass builds its ``features`` and calls ``finish``."""

    def finish(self, in_shape: tuple[int, ...], widths: tuple[int, int], num_classes: int) -> None:
        with torch.no_grad():
            dim = self.features(torch.zeros(1, *in_shape)).numel()
        self.fc = nn.Sequential(
            nn.Linear(dim, widths[0]), nn.ReLU(inplace=True), nn.Linear(widths[0], widths[1]), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(widths[1], num_classes)
        self.feature_dim = widths[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
