"""The shared unroll engine: gradients match finite differences, and checkpointed segments match the plain graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilset.nets import create_net
from distilset.unroll import forward, net_params, sgd_step, unrolled_gradient


def _problem(steps: int = 6):
    g = torch.Generator().manual_seed(0)
    net = create_net("mlp", (1, 4, 4), 3, width=8, depth=1, seed=0).double()
    p0 = {k: v.double() for k, v in net_params(net).items()}
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.double, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    raw = torch.full((steps,), 0.3, dtype=torch.double, requires_grad=True)
    xr, yr = torch.randn(20, 1, 4, 4, generator=g, dtype=torch.double), torch.randint(3, (20,), generator=g)

    def step_fn(t):
        sl = slice((t % 2) * 3, (t % 2) * 3 + 3)
        return x[sl], y[sl], F.softplus(raw[t])

    def outer(p):
        return F.cross_entropy(forward(net, p, xr), yr)

    return net, p0, step_fn, outer, x, raw


def test_gradient_matches_finite_differences():
    net, p0, step_fn, outer, x, raw = _problem()
    loss, (gx, graw) = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw])
    eps = 1e-6
    for leaf, grad in ((x, gx), (raw, graw)):
        direction = torch.randn_like(leaf)
        with torch.no_grad():
            leaf += eps * direction
        up, _ = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw])
        with torch.no_grad():
            leaf -= 2 * eps * direction
        down, _ = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw])
        with torch.no_grad():
            leaf += eps * direction
        numeric = (up - down) / (2 * eps)
        assert abs(float(numeric) - float((grad * direction).sum())) < 1e-6 * max(1.0, abs(float(numeric)))
    assert graw.abs().sum() > 0 and gx.abs().sum() > 0


@pytest.mark.parametrize("segment", [1, 2, 4, 6, 10])
def test_checkpointed_segments_give_the_plain_gradient(segment):
    net, p0, step_fn, outer, x, raw = _problem()
    loss, grads = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw])
    loss2, grads2 = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw], segment=segment)
    assert float(loss) == pytest.approx(float(loss2), abs=1e-12)
    for a, b in zip(grads, grads2, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("segment", "recomputed"), [(2, 4), (4, 4), (5, 5), (6, 0)])
def test_the_checkpointed_path_computes_each_step_at_most_twice_and_the_last_segment_once(segment, recomputed):
    """6 steps: every step once forward, then again for every segment but the last (its graph is kept)."""
    net, p0, step_fn, outer, x, raw = _problem()
    calls = []

    def counted(t):
        calls.append(t)
        return step_fn(t)

    _, plain = unrolled_gradient(net, p0, step_fn, 6, outer, [x, raw])
    _, grads = unrolled_gradient(net, p0, counted, 6, outer, [x, raw], segment=segment)
    assert len(calls) == 6 + recomputed and sorted(set(calls)) == list(range(6))
    for a, b in zip(plain, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_float32_paths_agree_to_1e5():
    net = create_net("lenet", (1, 8, 8), 10, seed=1)
    p0 = net_params(net)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 1, 8, 8, generator=g, requires_grad=True)
    raw = torch.full((9,), -3.0, requires_grad=True)
    y = torch.arange(10).repeat(2)
    xr, yr = torch.randn(64, 1, 8, 8, generator=g), torch.randint(10, (64,), generator=g)

    def step_fn(t):
        return x[(t % 2) * 10 : (t % 2) * 10 + 10], y[:10], F.softplus(raw[t])

    def outer(p):
        return F.cross_entropy(forward(net, p, xr), yr)

    _, plain = unrolled_gradient(net, p0, step_fn, 9, outer, [x, raw])
    _, ckpt = unrolled_gradient(net, p0, step_fn, 9, outer, [x, raw], segment=3)
    for a, b in zip(plain, ckpt, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_sgd_step_without_graph_returns_fresh_leaves():
    net = create_net("mlp", (1, 4, 4), 3, width=8, depth=1, seed=0)
    p = net_params(net)
    new = sgd_step(
        net, p, torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1]), torch.tensor(0.1), create_graph=False
    )
    assert all(v.is_leaf and v.requires_grad for v in new.values())
    assert any(not torch.equal(new[k], p[k]) for k in p)
