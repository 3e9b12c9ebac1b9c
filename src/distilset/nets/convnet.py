"""ConvNet of DC/DSA/DM/MTT: [conv3x3 -> norm -> ReLU -> pool] x depth -> linear.

For 28x28 inputs the first conv pads by 3 so the image behaves as 32x32 (the DC convention), giving a final
4x4 map at depth 3.
"""

from __future__ import annotations

import torch
from torch import nn

from distilset.errors import DistilsetError
from distilset.nets.layers import norm_layer, pool_layer
from distilset.nets.registry import register_net


class ConvNet(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        pooling: str = "avg",
    ):
        super().__init__()
        channels, h, w = in_shape
        layers: list[nn.Module] = []
        for d in range(depth):
            pad = 3 if d == 0 and (h, w) == (28, 28) else 1
            layers += [
                nn.Conv2d(channels, width, 3, padding=pad),
                norm_layer(norm, width),
                nn.ReLU(inplace=True),
            ]
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            layers.append(pool_layer(pooling))
            if pooling != "none":
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise DistilsetError(f"ConvNet depth {depth} pools a {in_shape[1:]} image away; lower depth")
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_net("convnet")
def convnet(in_shape, num_classes, **kw) -> ConvNet:
    """ConvNet-3, width 128, instance norm, average pooling (DC defaults); options width/depth/norm/pooling."""
    return ConvNet(in_shape, num_classes, **kw)


register_net("convnet-bn", norm="batch")(convnet)
register_net("convnet-d4", depth=4)(convnet)
