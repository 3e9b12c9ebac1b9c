"""A small ResNet (basic blocks) for cross-architecture checks; instance norm by default, as DC's ResNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distilset.nets.layers import norm_layer
from distilset.nets.registry import register_net


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = norm_layer(norm, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        blocks: tuple[int, ...] = (1, 1, 1, 1),
        width: int = 64,
        norm: str = "instance",
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), norm_layer(norm, width), nn.ReLU()
        )
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, norm))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_net("resnet10", blocks=(1, 1, 1, 1))
@register_net("resnet18", blocks=(2, 2, 2, 2))
def resnet(in_shape, num_classes, **kw) -> ResNet:
    """ResNet with basic blocks (resnet10: 1 per stage, resnet18: 2); options width/norm."""
    return ResNet(in_shape, num_classes, **kw)
