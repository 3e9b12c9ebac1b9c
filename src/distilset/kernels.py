"""Infinite-width kernels (NNGP and NTK) of ReLU networks, in PyTorch, from one network description.

In the spirit of neural-tangents' ``stax`` (Novak et al. 2020): a network is ``serial(layer, layer, ...)`` of
``Conv``, ``Dense``, ``Relu``, ``AvgPool``, ``Flatten`` and ``GlobalAvgPool``; the description gives both its
kernel function (``net.kernel(x1, x2)``) and a finite network of any width (``net.module(...)``) for transfer.

Parameterisation: NTK (Jacot et al. 2018), weight variance ``w_std**2`` (2 by default, ReLU's He scaling) over
the fan-in, bias std ``b_std`` (0.1). Recursions for an affine layer A (a dense layer, or a 3x3 SAME
convolution, whose kernel averages the 9 positions of the patch):

    K' = w_std^2 A(K) + b_std^2            Theta' = K' + w_std^2 A(Theta)

and for ReLU (the arc-cosine kernel of degree 1, Cho & Saul 2009), with the angle theta between the two
pre-activations computed as ``atan2(sqrt(k11 k22 - k12^2), k12)`` (stable gradients at equal inputs):

    K' = (sqrt(k11 k22 - k12^2) + (pi - theta) k12) / (2 pi)      Theta' = Theta (pi - theta) / (2 pi)

Spatial structure is tracked only as far as the network needs it: a fully connected network keeps one number
per pair of inputs; convolutions followed by ``Flatten`` need the covariance of each pixel with itself only
(a conv's output pixel depends on the same positions of both inputs); pooling needs the full covariance of
every pixel pair (H W x H W per pair of inputs), which is what makes pooled ConvNet kernels costly. Everything
is float64, computed in blocks of input pairs whose size ``max_block_mb`` bounds; gradients flow to the inputs
(KIP learns its support images through the kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distilset.errors import DistilsetError

DENSE, DIAG, FULL = "dense", "diag", "full"
"""How much spatial structure a kernel carries: none, each pixel with itself, or every pixel pair."""


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(x, 0)) with a zero (not infinite) gradient where x <= 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _variances(mode: str, k_self: torch.Tensor) -> torch.Tensor:
    """Per-pixel variances from an input's own kernel (N, *spatial) -> (N, *pixels)."""
    if mode == FULL:
        n, h, w = k_self.shape[:3]
        return k_self.reshape(n, h * w, h * w).diagonal(dim1=1, dim2=2).reshape(n, h, w)
    return k_self


def _pair_shapes(mode: str, v1: torch.Tensor, v2: torch.Tensor, paired: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast per-pixel variances against a kernel: pairs (N1, N2, ...) or an input with itself (N, ...)."""
    if mode == FULL:  # kernel (.., H, W, H, W): rows from the first input, columns from the second
        v1, v2 = v1[..., :, :, None, None], v2[..., None, None, :, :]
    if paired:
        v1 = v1.reshape(v1.shape[0], 1, *v1.shape[1:])
        v2 = v2.reshape(1, *v2.shape)
    return v1, v2


def _relu(k: torch.Tensor, ntk: torch.Tensor | None, v1: torch.Tensor, v2: torch.Tensor):
    prod = v1 * v2
    det = _safe_sqrt(prod - k * k)
    theta = torch.atan2(det, k)
    k_new = (det + (math.pi - theta) * k) / (2 * math.pi)
    return k_new, None if ntk is None else ntk * (math.pi - theta) / (2 * math.pi)


def _box3(k: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean over a 3x3 SAME patch (zero padding): of each pixel (diag), or of the same offset at both pixels of
    a pair (full: weights are shared, so only equal offsets correlate)."""
    if mode == DIAG:
        lead, (h, w) = k.shape[:-2], k.shape[-2:]
        flat = k.reshape(-1, 1, h, w)
        out = nn.functional.conv2d(flat, torch.ones(1, 1, 3, 3, dtype=k.dtype, device=k.device), padding=1)
        return out.reshape(*lead, h, w) / 9
    h, w = k.shape[-4:-2]
    padded = nn.functional.pad(k, (1, 1, 1, 1, 0, 0, 0, 0))  # pad the second pixel's (h, w)
    padded = padded.permute(*range(padded.ndim - 4), -2, -1, -4, -3)
    padded = nn.functional.pad(padded, (1, 1, 1, 1))  # now the first pixel's
    padded = padded.permute(*range(padded.ndim - 4), -2, -1, -4, -3)
    out = sum(padded[..., dy : dy + h, dx : dx + w, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return out / 9


def _pool2(k: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling, stride 2, of both pixels of every pair (full mode); odd edges dropped."""
    h, w = k.shape[-4:-2]
    h2, w2 = h // 2, w // 2
    k = k[..., : 2 * h2, : 2 * w2, : 2 * h2, : 2 * w2]
    k = k.reshape(*k.shape[:-4], h2, 2, w2, 2, h2, 2, w2, 2)
    return k.mean(dim=(-7, -5, -3, -1))


class Layer:
    """One piece of a network description: a kernel map and a finite module."""

    needs = DENSE

    def kernel(self, k: torch.Tensor, ntk: torch.Tensor | None, mode: str, var=None) -> tuple:
        raise NotImplementedError

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        raise NotImplementedError


@dataclass
class Dense(Layer):
    """Fully connected layer of ``width`` units (infinite in the kernel)."""

    w_std: float = math.sqrt(2.0)
    b_std: float = 0.1

    def kernel(self, k, ntk, mode, var=None):
        k_new = self.w_std**2 * k + self.b_std**2
        return k_new, None if ntk is None else k_new + self.w_std**2 * ntk, mode

    def module(self, features: int, width: int) -> tuple[nn.Module, int]:
        return nn.LazyLinear(width), width


@dataclass
class Conv(Layer):
    """3x3 convolution, SAME padding, stride 1."""

    w_std: float = math.sqrt(2.0)
    b_std: float = 0.1
    needs = DIAG

    def kernel(self, k, ntk, mode, var=None):
        k_new = self.w_std**2 * _box3(k, mode) + self.b_std**2
        return k_new, None if ntk is None else k_new + self.w_std**2 * _box3(ntk, mode), mode

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        return nn.Conv2d(channels, width, 3, padding=1), width


class Relu(Layer):
    def kernel(self, k, ntk, mode, var=None):
        k_new, ntk_new = _relu(k, ntk, *var)
        return k_new, ntk_new, mode

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        return nn.ReLU(), channels


class AvgPool(Layer):
    """2x2 average pooling, stride 2."""

    needs = FULL

    def kernel(self, k, ntk, mode, var=None):
        return _pool2(k), None if ntk is None else _pool2(ntk), mode

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        return nn.AvgPool2d(2), channels


class Flatten(Layer):
    """Flatten the feature maps (the next dense layer averages each pixel's covariance with itself)."""

    def kernel(self, k, ntk, mode, var=None):
        return _readout(k, mode, diagonal=True), None if ntk is None else _readout(ntk, mode, diagonal=True), DENSE

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        return nn.Flatten(), channels


class GlobalAvgPool(Layer):
    """Average over all pixels (the covariance of the means: every pixel pair)."""

    needs = FULL

    def kernel(self, k, ntk, mode, var=None):
        return _readout(k, mode, diagonal=False), None if ntk is None else _readout(ntk, mode, diagonal=False), DENSE

    def module(self, channels: int, width: int) -> tuple[nn.Module, int]:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels


def _readout(k: torch.Tensor, mode: str, diagonal: bool) -> torch.Tensor:
    if mode == DENSE:
        return k
    if mode == DIAG:
        return k.mean(dim=(-2, -1))
    h, w = k.shape[-4:-2]
    flat = k.reshape(*k.shape[:-4], h * w, h * w)
    return flat.diagonal(dim1=-2, dim2=-1).mean(-1) if diagonal else flat.mean(dim=(-2, -1))


class Serial:
    """A network description: ``kernel(x1, x2)`` gives its NNGP and NTK, ``module(...)`` a finite network."""

    def __init__(self, *layers: Layer):
        if not layers:
            raise DistilsetError("a network description needs at least one layer")
        self.layers = layers
        needs = [layer.needs for layer in layers]
        self.mode = FULL if FULL in needs else DIAG if DIAG in needs else DENSE

    def _input(self, x1: torch.Tensor, x2: torch.Tensor, paired: bool) -> torch.Tensor:
        """The input layer's covariance, averaged over channels (fan-in normalisation)."""
        if self.mode == DENSE:
            a, b = x1.flatten(1), x2.flatten(1)
            return a @ b.T / a.shape[1] if paired else (a * b).sum(1) / a.shape[1]
        c = x1.shape[1]
        if self.mode == DIAG:
            return torch.einsum("nchw,mchw->nmhw" if paired else "nchw,nchw->nhw", x1, x2) / c
        return torch.einsum("nchw,mcij->nmhwij" if paired else "nchw,ncij->nhwij", x1, x2) / c

    def _forward(self, x1, x2, want_ntk: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernels of all pairs (x1[i], x2[j]), propagating each input's own kernel beside them."""
        mode = self.mode
        k = self._input(x1, x2, paired=True)
        s1, s2 = self._input(x1, x1, paired=False), self._input(x2, x2, paired=False)
        ntk = torch.zeros_like(k) if want_ntk else None
        for layer in self.layers:
            var = None
            if isinstance(layer, Relu):
                v1, v2 = _variances(mode, s1), _variances(mode, s2)
                var = _pair_shapes(mode, v1, v2, paired=True)
                new_s1 = layer.kernel(s1, None, mode, _pair_shapes(mode, v1, v1, paired=False))[0]
                new_s2 = layer.kernel(s2, None, mode, _pair_shapes(mode, v2, v2, paired=False))[0]
            else:
                new_s1, new_s2 = layer.kernel(s1, None, mode)[0], layer.kernel(s2, None, mode)[0]
            k, ntk, new_mode = layer.kernel(k, ntk, mode, var)
            s1, s2, mode = new_s1, new_s2, new_mode
        if mode != DENSE:
            raise DistilsetError("a network description must end in Flatten or GlobalAvgPool (then Dense)")
        return k, ntk

    def kernel(
        self, x1: torch.Tensor, x2: torch.Tensor | None = None, get: str = "ntk", max_block_mb: float = 256.0
    ) -> torch.Tensor:
        """The (N1, N2) kernel matrix (``get``: ``ntk`` or ``nngp``) in float64, in blocks of pairs small enough
        for ``max_block_mb`` MB of intermediate tensors; differentiable with respect to both inputs."""
        if get not in ("ntk", "nngp"):
            raise DistilsetError(f"`get` must be ntk or nngp, got {get!r}")
        x2 = x1 if x2 is None else x2
        x1, x2 = x1.double(), x2.double()
        if self.mode != DENSE and (x1.ndim != 4 or x2.ndim != 4):
            raise DistilsetError(f"a convolutional kernel needs images (N, C, H, W), got {tuple(x1.shape)}")
        per_pair = 8 * 6 * self._spatial_size(x1)
        rows = max(1, int(max_block_mb * 2**20 // max(per_pair * len(x2), 1)))
        cols = len(x2) if rows > 1 else max(1, int(max_block_mb * 2**20 // per_pair))
        out = []
        for i in range(0, len(x1), rows):
            row = [self._forward(x1[i : i + rows], x2[j : j + cols], get == "ntk") for j in range(0, len(x2), cols)]
            out.append(torch.cat([ntk if get == "ntk" else k for k, ntk in row], dim=1))
        return torch.cat(out, dim=0)

    def _spatial_size(self, x: torch.Tensor) -> int:
        if self.mode == DENSE:
            return 1
        hw = x.shape[-2] * x.shape[-1]
        return hw * hw if self.mode == FULL else hw

    def module(self, in_shape: Sequence[int], num_classes: int, width: int = 1024) -> nn.Module:
        """A finite network of this description, ``width`` channels / units per hidden layer, ``num_classes``
        outputs (PyTorch's default init, standard parameterisation: the transfer networks KIP trains)."""
        channels, mods = in_shape[0], []
        layers = list(self.layers)
        for layer in layers[:-1]:
            mod, channels = layer.module(channels, width)
            mods.append(mod)
        mods.append(nn.LazyLinear(num_classes))
        net = nn.Sequential(*mods)
        with torch.no_grad():
            net(torch.zeros(1, *in_shape))  # materialise the lazy layers
        return net


def serial(*layers: Layer) -> Serial:
    return Serial(*layers)


def fc(depth: int = 1, w_std: float = math.sqrt(2.0), b_std: float = 0.1) -> Serial:
    """``depth`` hidden ReLU layers, then a dense readout (KIP's FC kernels)."""
    return serial(*[piece for _ in range(depth) for piece in (Dense(w_std, b_std), Relu())], Dense(w_std, b_std))


def conv(depth: int = 3, pool: bool = True, w_std: float = math.sqrt(2.0), b_std: float = 0.1) -> Serial:
    """The ConvNet of KIP and DC: ``depth`` x [3x3 conv, ReLU, 2x2 average pooling if ``pool``], flatten, dense.
    Without pooling the kernel needs each pixel's covariance with itself only (cheap); with it, every pixel
    pair."""
    body = []
    for _ in range(depth):
        body += [Conv(w_std, b_std), Relu()] + ([AvgPool()] if pool else [])
    return serial(*body, Flatten(), Dense(w_std, b_std))


ARCHITECTURES = {
    "fc": lambda depth: fc(depth),
    "conv": lambda depth: conv(depth, pool=False),
    "convnet": lambda depth: conv(depth, pool=True),
}
"""Named descriptions: ``fc`` (dense ReLU), ``conv`` (convolutions, no pooling), ``convnet`` (with pooling)."""


def architecture(name: str, depth: int) -> Serial:
    if name not in ARCHITECTURES:
        raise DistilsetError(f"unknown kernel architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](depth)


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot targets minus 1 / num_classes (KIP's and FRePo's regression targets)."""
    return nn.functional.one_hot(labels, num_classes).double() - 1.0 / num_classes


def krr(k_ss: torch.Tensor, k_ts: torch.Tensor, y_s: torch.Tensor, reg: float = 1e-6) -> torch.Tensor:
    """Kernel ridge regression: K_ts (K_ss + reg * tr(K_ss) / n * I)^-1 Y_s, by Cholesky, in float64."""
    n = len(k_ss)
    k_ss, k_ts, y_s = k_ss.double(), k_ts.double(), y_s.double()
    eye = torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    chol, info = torch.linalg.cholesky_ex(k_ss + reg * torch.trace(k_ss) / n * eye)
    if int(info) != 0:
        raise DistilsetError("the support kernel is not positive definite; raise the ridge `reg`")
    return k_ts @ torch.cholesky_solve(y_s, chol)


__all__ = [
    "ARCHITECTURES",
    "AvgPool",
    "Conv",
    "Dense",
    "Flatten",
    "GlobalAvgPool",
    "Relu",
    "Serial",
    "architecture",
    "centred_one_hot",
    "conv",
    "fc",
    "krr",
    "serial",
]
