"""KIP and Label Solve: a falling loss, exact resume, learned labels, the least-squares labels, the kernel
recipe saved and evaluated, and with default flags support sets that beat random real images on digits."""

from __future__ import annotations

import pytest
import torch

import distilset as ds
from distilset.evaluate import transfer_accuracy
from distilset.kernels import architecture, krr
from distilset.methods import Context
from distilset.methods.kip import KernelSupport, KIPConfig, LSConfig
from distilset.recipes import KernelRidge


def test_kip_loss_falls_resume_is_exact_and_labels_learn(digits, tmp_path):
    kip = KernelSupport(digits, KIPConfig(ipc=2, target_batch=200, learn_labels=True), Context(seed=3))
    start = kip.labels.detach().clone()
    losses = [kip.step(i)["loss"] for i in range(30)]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert not torch.allclose(kip.labels, start)
    full = ds.distill("kip", digits, iterations=6, out=tmp_path / "full", ipc=1, target_batch=100)
    ds.distill("kip", digits, iterations=3, out=tmp_path / "cut", ipc=1, target_batch=100)
    resumed = ds.distill("kip", digits, iterations=6, out=tmp_path / "cut", resume=True, ipc=1, target_batch=100)
    assert torch.equal(full.images, resumed.images)


def test_label_solve_labels_are_the_least_squares_solution(digits):
    ls = KernelSupport(digits, LSConfig(ipc=2, targets=300), Context(seed=1))
    ls.step(0)
    again = KernelSupport(digits, LSConfig(ipc=2, targets=300), Context(seed=1))
    x_t, y_t = again._targets(300)  # the same seed draws the same support, then the same targets
    net = architecture("fc", 1)
    k_ss, k_ts = net.kernel(again.images, again.images), net.kernel(x_t, again.images)

    def residual(labels):
        return (krr(k_ss, k_ts, labels, reg=1e-6) - y_t).pow(2).sum().item()

    best = residual(ls.labels)
    assert best < residual(again.labels)  # better than the one-hot labels it started from
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # and than any nearby labels
        assert best <= residual(ls.labels + 1e-3 * torch.randn(ls.labels.shape, generator=g, dtype=torch.float64))


def test_kernel_sets_save_evaluate_by_kernel_regression_and_transfer_by_mse(digits, tmp_path):
    syn = ds.distill("ls", digits, out=tmp_path / "ls", ipc=1)
    loaded = ds.SyntheticSet.load(tmp_path / "ls")
    assert loaded.recipe == KernelRidge(arch="fc", depth=1) and loaded.soft and loaded.labels.min() < 0
    res = ds.evaluate(loaded, digits)
    x, y = syn.images.double(), syn.labels.double()
    net = architecture("fc", 1)
    pred = krr(net.kernel(x, x), net.kernel(digits.test_x.double(), x), y).argmax(1)
    assert res.accuracy_mean == pytest.approx((pred == digits.test_y).double().mean().item())
    assert res.net == "kernel:fc" and res.repeats == 1
    finite = ds.evaluate(loaded, digits, protocol="standard", repeats=1, steps=50)
    # the finite net the fc kernel describes (an MLP of its depth, KIP's width) by KIP's transfer recipe
    assert finite.net == "mlp" and finite.net_kwargs == {"depth": 1, "width": 1024}
    assert (
        finite.recipe["loss"] == "mse" and finite.recipe["schedule"] == "cosine" and finite.recipe["batch_size"] == 100
    )
    rows = ds.evaluate_nets(loaded, digits, ["mlp", "convnet"], repeats=1)  # its own "net": kernel regression
    assert [(r.net, r.protocol) for r in rows] == [("kernel:fc", "recipe"), ("convnet", "standard")]
    assert rows[0].accuracy_mean == res.accuracy_mean and rows[1].recipe["loss"] == "mse"
    assert transfer_accuracy(rows, "mlp") == rows[1].accuracy_mean
    with pytest.raises(ds.DistilsetError, match="kernel-regression set has no network"):
        ds.evaluate(loaded, digits, net="lenet")
    with pytest.raises(ds.ConfigError, match="recipe is kernel regression; add --protocol standard"):
        ds.evaluate(loaded, digits, epochs=3)


def test_bad_options_are_refused(digits):
    with pytest.raises(ds.ConfigError, match="lr must be > 0"):
        ds.distill("kip", digits, lr=0)
    with pytest.raises(ds.ConfigError, match="reg must be a finite number >= 0"):
        ds.distill("ls", digits, reg=-1.0)
    with pytest.raises(ds.DistilsetError, match="ipc 500 needs 500 training images"):
        ds.distill("kip", digits, ipc=500)


@pytest.mark.parametrize("method", ["kip", "ls"])
def test_default_flags_beat_random_real_on_digits(method, digits):
    """`distill kip|ls --dataset digits` with default flags (KIP at a tenth of its budget: 100 of 1000
    iterations), scored by kernel regression with the same kernel beside random real images of the same count
    with their one-hot labels."""
    syn = ds.distill(method, digits, iterations=100 if method == "kip" else None)
    assert syn.config["ipc"] == 10 and syn.config["arch"] == "fc"
    real = ds.baseline("random", digits, ipc=10, seed=0)
    real.recipe = syn.recipe
    distilled, random_real = ds.evaluate(syn, digits), ds.evaluate(real, digits)
    assert distilled.accuracy_mean > random_real.accuracy_mean + 0.02, (distilled, random_real)
