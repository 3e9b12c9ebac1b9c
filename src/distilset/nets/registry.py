"""One registry for every network: ``create_net(name, in_shape, num_classes, **kw)`` (timm style)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from distilset.errors import DistilsetError
from distilset.nets.init import init_weights

NETS: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str, **defaults):
    """Decorator: register a constructor ``fn(in_shape, num_classes, **kw)`` under ``name``."""

    def wrap(fn):
        NETS[name] = lambda in_shape, num_classes, **kw: fn(in_shape, num_classes, **{**defaults, **kw})
        NETS[name].__doc__ = fn.__doc__
        return fn

    return wrap


def create_net(
    name: str,
    in_shape: tuple[int, ...],
    num_classes: int,
    seed: int | None = None,
    init: str = "default",
    **kw,
) -> nn.Module:
    """Build network ``name`` for inputs of ``in_shape`` (C, H, W) and ``num_classes`` outputs.

    ``seed`` makes the initial weights deterministic without touching the global RNG; ``init`` is
    ``default`` (PyTorch's layer defaults, as in DC/MTT) or ``xavier`` (xavier-normal weights, zero biases,
    as in Dataset Distillation).
    """
    if name not in NETS:
        raise DistilsetError(f"unknown net {name!r}; known: {', '.join(sorted(NETS))}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            net = NETS[name](tuple(in_shape), num_classes, **kw)
        except TypeError as e:
            raise DistilsetError(f"bad option for net {name!r}: {e}") from e
        init_weights(net, init)
    return net


def list_nets() -> list[str]:
    return sorted(NETS)
