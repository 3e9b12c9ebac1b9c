"""The infinite-width kernels: exact values against the recursions written out by hand for tiny inputs, Monte
Carlo agreement with many wide random networks (NNGP) and their parameter gradients (NTK), gradients to the
inputs, and kernel ridge regression."""

from __future__ import annotations

import math

import pytest
import torch

from distilset import kernels as K

W2, B2 = 2.0, 0.01  # w_std^2 and b_std^2 of the NTK parameterisation used throughout


def relu_pair(k11: float, k22: float, k12: float) -> tuple[float, float]:
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for centred Gaussians with these (co)variances."""
    cos = max(-1.0, min(1.0, k12 / math.sqrt(k11 * k22)))
    theta = math.acos(cos)
    k = math.sqrt(k11 * k22) * (math.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    return k, (math.pi - theta) / (2 * math.pi)


def test_one_hidden_layer_fc_kernel_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    net = K.fc(depth=1)
    nngp, ntk = net.kernel(x, x, get="nngp"), net.kernel(x, x, get="ntk")
    for i in range(3):
        for j in range(3):
            k0 = [[float(x[a] @ x[b]) / 5 for b in (i, j)] for a in (i, j)]
            k1 = [[W2 * v + B2 for v in row] for row in k0]
            relu, dot = relu_pair(k1[0][0], k1[1][1], k1[0][1])
            want_nngp = W2 * relu + B2
            want_ntk = want_nngp + W2 * dot * k1[0][1]  # the first layer's NTK is its NNGP
            assert nngp[i, j].item() == pytest.approx(want_nngp, rel=1e-7)  # acos near 1 limits the hand side
            assert ntk[i, j].item() == pytest.approx(want_ntk, rel=1e-7)


def conv_by_hand(x1: torch.Tensor, x2: torch.Tensor, pooled: bool) -> tuple[float, float]:
    """Conv 3x3 SAME -> ReLU -> (global average pool | flatten) -> dense, for two (C, 4, 4) images, by loops
    over pixels: the layer-1 covariance of pixels p (image a) and q (image b) sums the products of the 3x3
    patches at equal offsets."""
    c, h, w = x1.shape

    def patch_cov(a, b, p, q):
        total = 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                (py, px), (qy, qx) = (p[0] + dy, p[1] + dx), (q[0] + dy, q[1] + dx)
                if 0 <= py < h and 0 <= px < w and 0 <= qy < h and 0 <= qx < w:
                    total += float(a[:, py, px] @ b[:, qy, qx]) / c
        return W2 * total / 9 + B2

    pixels = [(i, j) for i in range(h) for j in range(w)]
    pairs = [(p, q) for p in pixels for q in pixels] if pooled else [(p, p) for p in pixels]
    nngp = ntk = 0.0
    for p, q in pairs:
        k12 = patch_cov(x1, x2, p, q)
        relu, dot = relu_pair(patch_cov(x1, x1, p, p), patch_cov(x2, x2, q, q), k12)
        nngp += relu / len(pairs)
        ntk += (relu + dot * k12) / len(pairs)  # readout's own term + relu' x the conv layer's NTK (= its NNGP)
    return W2 * nngp + B2, W2 * ntk + B2


@pytest.mark.parametrize("pooled", [False, True])
def test_conv_3x3_on_4x4_by_hand(pooled):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    tail = [K.GlobalAvgPool()] if pooled else [K.Flatten()]
    net = K.serial(K.Conv(), K.Relu(), *tail, K.Dense())
    assert net.mode == ("full" if pooled else "diag")
    nngp, ntk = net.kernel(x, x, get="nngp"), net.kernel(x, x, get="ntk")
    for i in range(2):
        for j in range(2):
            want_nngp, want_ntk = conv_by_hand(x[i], x[j], pooled)
            assert nngp[i, j].item() == pytest.approx(want_nngp, rel=1e-9)
            assert ntk[i, j].item() == pytest.approx(want_ntk, rel=1e-9)


def test_average_pooling_2x2_averages_the_four_by_four_block_of_pixel_pairs():
    k = torch.arange(4.0**4, dtype=torch.float64).reshape(1, 1, 4, 4, 4, 4) ** 0.5
    pooled = K._pool2(k)
    assert pooled.shape == (1, 1, 2, 2, 2, 2)
    assert pooled[0, 0, 1, 0, 0, 1].item() == pytest.approx(k[0, 0, 2:4, 0:2, 0:2, 2:4].mean().item())


# --- Monte Carlo: wide random networks in the NTK parameterisation ------------------------------------------


def finite_forward(params: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, arch: str,
                   features: bool = False) -> torch.Tensor:  # fmt: skip
    """f(x) of a finite network in the NTK parameterisation: each layer w_std / sqrt(fan_in) * W h + b_std * b
    with standard normal W, b; ``arch`` as in ``kernels.ARCHITECTURES``. ``features``: the readout's input."""
    h = x.flatten(1) if arch == "fc" else x
    for i, (w, b) in enumerate(params):
        last = i == len(params) - 1
        if w.ndim == 4:
            h = torch.nn.functional.conv2d(h, w, padding=1) * math.sqrt(W2 / (w.shape[1] * 9)) + 0.1 * b[:, None, None]
            h = torch.relu(h)
            if arch == "convnet":
                h = torch.nn.functional.avg_pool2d(h, 2)
            continue
        if h.ndim == 4:
            h = h.flatten(1)
        if last and features:
            return h
        h = h @ w.T * math.sqrt(W2 / w.shape[1]) + 0.1 * b
        if not last:
            h = torch.relu(h)
    return h


def random_params(arch: str, in_shape, width: int, depth: int, outputs: int, g) -> list:
    shapes, c = [], in_shape[0]
    if arch == "fc":
        d = math.prod(in_shape)
        for _ in range(depth):
            shapes.append((width, d))
            d = width
        shapes.append((outputs, d))
    else:
        h = in_shape[1]
        for _ in range(depth):
            shapes.append((width, c, 3, 3))
            c = width
            h = h // 2 if arch == "convnet" else h
        shapes.append((outputs, c * h * h))
    return [(torch.randn(s, generator=g, dtype=torch.float64).requires_grad_(True),
             torch.randn(s[0], generator=g, dtype=torch.float64).requires_grad_(True)) for s in shapes]  # fmt: skip


@pytest.mark.parametrize("arch", ["fc", "conv", "convnet"])
def test_wide_random_networks_converge_to_the_kernels(arch, digits):
    """Empirical NNGP (the output covariance of random nets of width >= 512, averaged over nets) and empirical
    NTK (inner products of one output's parameter gradients) against the analytic kernels, on 5 digits: within
    a few percent of the kernel's scale."""
    x = digits.train_x[:5].double()
    depth = 2
    net = K.architecture(arch, depth)
    nngp, ntk = net.kernel(x, x, get="nngp"), net.kernel(x, x, get="ntk")
    g = torch.Generator().manual_seed(0)
    empirical = torch.zeros_like(nngp)
    width, nets = (2048, 32) if arch == "fc" else (512, 8)  # a dense first layer on 64 inputs fluctuates more
    for _ in range(nets):  # the readout's expectation over its weights, given each random net's features
        params = random_params(arch, x.shape[1:], width, depth, 1, g)
        with torch.no_grad():
            h = finite_forward(params, x, arch, features=True)
        empirical += (W2 * h @ h.T / h.shape[1] + B2) / nets
    assert (empirical - nngp).abs().max() < 0.04 * nngp.diagonal().mean(), (empirical, nngp)
    params = random_params(arch, x.shape[1:], 1024 if arch == "fc" else 256, depth, 1, g)
    flat = [p for pair in params for p in pair]
    jac = []
    for i in range(len(x)):
        grads = torch.autograd.grad(finite_forward(params, x[i : i + 1], arch).sum(), flat)
        jac.append(torch.cat([gr.flatten() for gr in grads]))
    jac = torch.stack(jac)
    empirical_ntk = jac @ jac.T
    assert (empirical_ntk - ntk).abs().max() < 0.08 * ntk.diagonal().mean(), (empirical_ntk, ntk)


def test_gradients_reach_the_inputs_even_at_equal_inputs(digits):
    x = digits.train_x[:4].double().requires_grad_(True)
    for arch in ("fc", "conv", "convnet"):
        k = K.architecture(arch, 2).kernel(x, x, get="ntk")
        (grad,) = torch.autograd.grad(k.sum(), x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_blocks_do_not_change_the_kernel(digits):
    x = digits.train_x[:7].double()
    net = K.architecture("convnet", 2)
    whole = net.kernel(x, x[:5])
    assert torch.allclose(net.kernel(x, x[:5], max_block_mb=0.05), whole, rtol=1e-12)


def test_krr_interpolates_the_support_and_solves_by_cholesky():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    k_ss = a @ a.T + torch.eye(6, dtype=torch.float64)
    y = K.centred_one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3)
    assert torch.allclose(y.sum(1), torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(K.krr(k_ss, k_ss, y, reg=0.0), y, atol=1e-9)
    k_ts = torch.randn(4, 6, generator=g, dtype=torch.float64)
    ridge = 0.5 * torch.trace(k_ss) / 6
    direct = k_ts @ torch.linalg.solve(k_ss + ridge * torch.eye(6, dtype=torch.float64), y)
    assert torch.allclose(K.krr(k_ss, k_ts, y, reg=0.5), direct, atol=1e-10)
