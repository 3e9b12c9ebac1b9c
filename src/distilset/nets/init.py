"""Weight-initialisation schemes shared by every network."""

from __future__ import annotations

from torch import nn

from distilset.errors import DistilsetError

INIT_SCHEMES = ("default", "xavier")


def init_weights(net: nn.Module, scheme: str = "default") -> nn.Module:
    """Re-initialise ``net`` in place with ``scheme`` using the global RNG (callers seed it)."""
    if scheme not in INIT_SCHEMES:
        raise DistilsetError(f"unknown init scheme {scheme!r}; known: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return net  # constructors already used PyTorch's defaults
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net
