"""Small building blocks shared by the networks: normalisation and pooling layers chosen by name."""

from __future__ import annotations

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
