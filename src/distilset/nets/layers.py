"""Small building blocks shared by the networks: normalisation and pooling layers chosen by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class _HalfAverage(torch.autograd.Function):
    """2x2 average pooling, stride 2, of an even-sized map (``avg_pool2d``), whose backward repeats a quarter of each
    gradient over its four inputs: the values of ``avg_pool2d_backward`` (a quarter is exact in binary floating
    point), without ATen's bfloat16 NCHW kernel for it, the slowest part of a ConvNet's bfloat16 training step on
    this CPU after the convolutions (measured by hand with the profiler, not in a benchmark row). Itself
    differentiable, so MTT's unrolled steps can use it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, 2)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return (grad * 0.25).repeat_interleave(2, -1).repeat_interleave(2, -2)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)``, with the faster backward of ``_HalfAverage`` for bfloat16 maps of even size (the
    float32 path is ATen's, unchanged)."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.requires_grad and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            return _HalfAverage.apply(x)
        return super().forward(x)


def pool_layer(kind: str) -> nn.Module:
    if kind == "avg":
        return AvgPool2x2()
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
