"""AlexCifarNet of Dataset Distillation (CIFAR-10): two 5x5 conv blocks with LRN, then fc 384-192-C."""

from __future__ import annotations

import torch
from torch import nn

from distilset.nets.registry import register_net


class AlexCifarNet(nn.Module):
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
        with torch.no_grad():
            dim = self.features(torch.zeros(1, channels, h, w)).numel()
        self.fc = nn.Sequential(nn.Linear(dim, 384), nn.ReLU(inplace=True), nn.Linear(384, 192), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(192, num_classes)
        self.feature_dim = 192

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_net("alexcifarnet")
def alexcifarnet(in_shape, num_classes) -> AlexCifarNet:
    """AlexCifarNet (Dataset Distillation's CIFAR-10 network)."""
    return AlexCifarNet(in_shape, num_classes)
