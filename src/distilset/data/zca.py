"""ZCA whitening fit on the training set and stored as tensors, so it can travel with a synthetic set.

W = U diag(1 / sqrt(S + eps)) U^T from the covariance of the centred, flattened training images, as in
MTT / KIP (Kornia's ``ZCAWhitening`` with ``eps=0.1``). Like them, ``Dataset.with_zca`` fits on the raw [0, 1]
pixels; because distilset's tensors are normalised per channel, the fitted transform is then rewritten to act on
normalised images (``for_normalized``): the same whitened output, with no second copy of the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distilset.errors import DistilsetError


@dataclass(frozen=True)
class ZCA:
    """A fitted whitening transform: ``apply(x) = (flatten(x) - mean) @ matrix``, shape preserved."""

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D)
    eps: float = 0.1

    def __post_init__(self) -> None:
        """Refuse a transform that would silently ruin every image: wrong dtype or shape, NaN/inf, a bad eps."""
        for name, t, ndim in (("zca.mean", self.mean, 1), ("zca.matrix", self.matrix, 2)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim != ndim:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise DistilsetError(f"{name} must be a float32 tensor with {ndim} dimension(s), got {got}")
            if not torch.isfinite(t).all():
                raise DistilsetError(f"{name} contains NaN or inf; refit ZCA on the training data (zca=True)")
        d = len(self.mean)
        if tuple(self.matrix.shape) != (d, d):
            raise DistilsetError(f"zca.matrix must be ({d}, {d}) to match zca.mean, got {tuple(self.matrix.shape)}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps < math.inf:
            raise DistilsetError(f"zca eps must be a positive finite number, got {self.eps!r}")

    @staticmethod
    def fit(x: torch.Tensor, eps: float = 0.1) -> ZCA:
        flat = x.reshape(len(x), -1).double()
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / max(len(flat) - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0)
        matrix = evecs @ torch.diag(1.0 / torch.sqrt(evals + eps)) @ evecs.T
        return ZCA(mean.float(), matrix.float(), eps)

    def for_normalized(self, norm, image_shape: tuple[int, ...]) -> ZCA:
        """This transform, fitted on raw pixels p, as one on normalised images x = (p - m) / s: with
        p - mean = (x - (mean - m) / s) * s per feature, apply(p) = (x - mean') @ (diag(s) @ matrix)."""
        c = image_shape[0]
        per_pixel = math.prod(image_shape[1:])
        m = torch.tensor(norm.mean, dtype=torch.float64).repeat_interleave(per_pixel)
        s = torch.tensor(norm.std, dtype=torch.float64).repeat_interleave(per_pixel)
        if len(m) != len(self.mean) or c != norm.channels:
            raise DistilsetError(f"ZCA of {len(self.mean)} features does not fit images {image_shape}")
        mean = (self.mean.double() - m) / s
        return ZCA(mean.float(), (s[:, None] * self.matrix.double()).float(), self.eps)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        return ((flat - self.mean.to(x)) @ self.matrix.to(x)).reshape(x.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to normalised pixel space (for pictures)."""
        inverse = torch.linalg.inv(self.matrix.double()).to(x)
        flat = x.reshape(len(x), -1)
        return (flat @ inverse + self.mean.to(x)).reshape(x.shape)
