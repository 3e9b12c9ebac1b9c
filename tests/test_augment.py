"""DSA: every op keeps shapes, passes gradients to the images, and the shared seed gives shared transforms."""

from __future__ import annotations

import pytest
import torch

from distilset.augment import OPS, DSAParams, dsa
from distilset.errors import DistilsetError


@pytest.mark.parametrize("op", OPS)
def test_gradient_reaches_images(op):
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    # Several seeds so random flips/cutouts that happen to be identity-like still leave a gradient.
    total = sum(dsa(x, op, seed=s).square().sum() for s in range(4))
    (grad,) = torch.autograd.grad(total, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("op", OPS)
def test_siamese_seed_gives_the_same_transform_to_real_and_synthetic(op):
    real = torch.randn(8, 1, 12, 12)
    syn = real[:3].clone()
    a = dsa(real, op, seed=7)
    b = dsa(syn, op, seed=7)
    assert torch.allclose(a[:3], b, atol=1e-6)  # same op, same parameters, whatever the batch size
    c = dsa(torch.cat([syn, syn]), op, seed=7)
    assert torch.allclose(c[:3], c[3:], atol=1e-6)  # one parameter set for the whole batch


def test_different_seeds_and_per_image_mode_differ():
    x = torch.randn(16, 3, 16, 16)
    outs = [dsa(x, seed=s) for s in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    per_image = dsa(torch.cat([x[:1]] * 8), "rotate", seed=3, siamese=False)
    assert not torch.allclose(per_image[0], per_image[1])


def test_crop_is_a_zero_filled_integer_translation():
    x = torch.arange(64.0).view(1, 1, 8, 8) + 1
    p = DSAParams(crop=0.25)
    seen_shift = False
    for s in range(20):
        y = dsa(x, "crop", seed=s, params=p)
        nonzero = y[y != 0]
        assert set(nonzero.tolist()) <= set(x.flatten().tolist())  # values moved, never blended
        seen_shift |= not torch.equal(y, x)
    assert seen_shift


def test_cutout_zeroes_a_square():
    x = torch.ones(2, 1, 10, 10)
    y = dsa(x, "cutout", seed=1, params=DSAParams(cutout=0.5))
    zeros = int((y[0] == 0).sum())
    assert 0 < zeros <= 25


def test_unknown_op_and_bad_shape():
    with pytest.raises(DistilsetError, match="unknown DSA op"):
        dsa(torch.zeros(1, 1, 4, 4), "color_blur")
    with pytest.raises(DistilsetError, match=r"\(N, C, H, W\)"):
        dsa(torch.zeros(4, 4), "color")


def test_every_op_returns_nchw_strides():
    x = torch.randn(5, 3, 8, 8)
    for op in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        assert dsa(x, op, seed=1, siamese=False).stride() == (192, 64, 8, 1), op
