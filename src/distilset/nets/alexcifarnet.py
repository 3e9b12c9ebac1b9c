"""AlexCifarNet of Dataset Distillation (CIFAR-10): two 5x5 conv blocks with LRN, then fc 384-192-C."""

from __future__ import annotations

from torch import nn

from distilset.nets.layers import ConvThenDense
from distilset.nets.registry import register_net


class AlexCifarNet(ConvThenDense):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        channels, h, w = in_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
            nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            nn.Conv2d(64, 64, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1.0),
            nn.MaxPool2d(3, 2, padding=1),
        )
        self.finish(in_shape, (384, 192), num_classes)


@register_net("alexcifarnet")
def alexcifarnet(in_shape, num_classes) -> AlexCifarNet:
    """AlexCifarNet (Dataset Distillation's CIFAR-10 network)."""
    return AlexCifarNet(in_shape, num_classes)
