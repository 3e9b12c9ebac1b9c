"""LeNet as used by Dataset Distillation for MNIST: conv6-5 (pad 2 for 1 channel), conv16-5, fc 120-84-C.

For inputs smaller than 28x28 (e.g. 8x8 digits) the second conv also pads by 2 so the map survives.
"""

from __future__ import annotations

from torch import nn

from distilset.nets.layers import ConvThenDense
from distilset.nets.registry import register_net


class LeNet(ConvThenDense):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        channels, h, w = in_shape
        pad1 = 2 if channels == 1 else 0
        h1 = (h + 2 * pad1 - 4) // 2
        pad2 = 0 if h1 >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.finish(in_shape, (120, 84), num_classes)


@register_net("lenet")
def lenet(in_shape, num_classes) -> LeNet:
    """LeNet-5 variant of Dataset Distillation (ReLU, max pooling)."""
    return LeNet(in_shape, num_classes)
