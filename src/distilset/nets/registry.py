"""One registry for every network: ``create_net(name, in_shape, num_classes, **kw)`` (timm style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distilset import jsonread
from distilset.errors import DistilsetError, SynsetFormatError
from distilset.nets.init import INIT_SCHEMES, init_weights

NETS: dict[str, Callable[..., nn.Module]] = {}
SIZE_BOUNDS = {"width": (1, 4096), "depth": (1, 8), "maps": (1, 4096)}
"""Sane ranges of the nets' size options, enforced on every net built and on nets named by files (a ConvNet of
depth 8 already needs 256x256 inputs; width 4096 is 32x DC's 128)."""


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
    as in Dataset Distillation). A ConvNet without a ``depth`` gets the one its input allows
    (``fit_net_to_input``).
    """
    if name not in NETS:
        raise DistilsetError(f"unknown `net` {name!r}; known: {', '.join(sorted(NETS))}")
    kw, _ = fit_net_to_input(name, kw, tuple(in_shape))
    for option, (low, high) in SIZE_BOUNDS.items():  # before any allocation: width 0 or 10^8 fails here, in words
        if option in kw:
            jsonread.whole(kw[option], f"net option {option} (`net_kwargs`)", low, high)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            net = NETS[name](tuple(in_shape), num_classes, **kw)
        except (TypeError, ValueError) as e:
            raise DistilsetError(
                f"bad option for net {name!r} (`net_kwargs`) or inputs of shape {tuple(in_shape)}: "
                f"{e}; its options: "
                f"{NETS[name].__doc__ or 'none'}"
            ) from e
        init_weights(net, init)
    return net


def list_nets() -> list[str]:
    return sorted(NETS)


def read_net_spec(net: Any) -> tuple[str, dict, str]:
    """``(name, kwargs, init)`` of a `net` field read from a file (a set's, a teacher's), refused unless it names a
    known net with sane scalar options."""
    if not isinstance(net, dict) or not isinstance(net.get("name"), str):
        raise SynsetFormatError(f"net must be an object with a string name, kwargs and init, got {net!r:.60}")
    name, kwargs, scheme = net["name"], net.get("kwargs", {}), net.get("init", "default")
    if name not in list_nets():
        raise SynsetFormatError(f"net names an unknown network {name!r:.40}; known: {', '.join(list_nets())}")
    if not isinstance(kwargs, dict) or not all(
        isinstance(v, (str, int, float, bool)) and v is not None for v in kwargs.values()
    ):
        raise SynsetFormatError(f"net kwargs must be an object of plain option values, got {kwargs!r:.60}")
    for option, (low, high) in SIZE_BOUNDS.items():
        if option in kwargs:
            try:
                jsonread.whole(kwargs[option], f"net option {option}", low, high)
            except DistilsetError as e:
                raise SynsetFormatError(str(e)) from e
    if scheme not in INIT_SCHEMES:
        raise SynsetFormatError(f"net init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r:.40}")
    return name, dict(kwargs), scheme


def classic_net_for(image_shape: tuple[int, ...]) -> tuple[str, str]:
    """The classic network for this input, with the reason: the evaluation default of a set without a net, and
    Dataset Distillation's and label distillation's net on images.

    Kim's TextCNN for token rows (L, D) (text dataset distillation's CNN; DD itself trains the LSTM there),
    LeNet for inputs of at least 20x20 (MNIST-like; its second 5x5 conv then sees a map of at least 6x6),
    AlexCifarNet for colour inputs of at least 32x32 (CIFAR-like), else an MLP: on smaller inputs (8x8 digits)
    LeNet's second stage would see a padded 4x4 map, and an MLP distils them better.
    """
    if len(image_shape) == 2:
        return "textcnn", f"token rows {tuple(image_shape)}: Kim's TextCNN (text dataset distillation's CNN)"
    if len(image_shape) != 3:
        return "mlp", f"inputs of shape {tuple(image_shape)} are not images"
    c, h, w = image_shape
    if c == 3 and min(h, w) >= 32:
        return "alexcifarnet", f"colour {h}x{w} inputs (Dataset Distillation's CIFAR-10 network)"
    if min(h, w) >= 20:
        return "lenet", f"{h}x{w} inputs (Dataset Distillation's MNIST network)"
    return "mlp", f"{h}x{w} inputs are too small for LeNet's two 5x5 conv stages"


def convnet_depth_for(image_shape: tuple[int, ...], depth: int = 3) -> int:
    """The largest ConvNet depth <= ``depth`` whose last feature map keeps at least 2x2 pixels."""
    h, w = image_shape[1:]
    if (h, w) == (28, 28):
        h, w = 32, 32  # the first conv pads 28x28 inputs by 3 (DC)
    for d in range(depth, 0, -1):
        if min(h, w) >> d >= 2:
            return d
    return 1


def fit_net_to_input(name: str, kwargs: dict, image_shape: tuple[int, ...]) -> tuple[dict, str | None]:
    """``kwargs`` for net ``name`` completed for this input: a ConvNet without an explicit depth gets the
    deepest one (at most 3) that leaves a 2x2 map, so 8x8 inputs are not pooled to a single pixel."""
    if not name.startswith("convnet") or "depth" in kwargs or len(image_shape) != 3:
        return kwargs, None
    default = 4 if name == "convnet-d4" else 3
    depth = convnet_depth_for(image_shape, default)
    if depth == default:
        return kwargs, None
    return {**kwargs, "depth": depth}, f"depth {depth}: {image_shape[1]}x{image_shape[2]} inputs leave a 2x2 map"
