"""DC and DSA (gradient matching): the layer-wise distance against its formula, the released code's loops,
siamese augmentation, batch-norm freezing, a falling loss, exact resume, and with default flags sets that beat
random real images of the same count on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import distilset as ds
from distilset.augment import dsa as real_dsa
from distilset.data.dataset import from_arrays
from distilset.methods import Context, dc, get_method, matching
from distilset.methods.dc import DCConfig, GradientMatching, layer_distance, loops_for, match_loss

FAST = {"real_batch": 32, "net_kwargs": {"width": 16}}


def direct_distance(g_syn: torch.Tensor, g_real: torch.Tensor) -> float:
    """DC's distance written out: for each output unit o, 1 - <a_o, b_o> / (|a_o| |b_o| + 1e-6), summed."""
    if g_syn.ndim == 1:
        return 0.0
    total = 0.0
    for o in range(g_syn.shape[0]):
        a, b = g_syn[o].flatten().double(), g_real[o].flatten().double()
        total += 1 - float(a @ b) / (float(a.norm()) * float(b.norm()) + 1e-6)
    return total


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7), (4, 2, 9), (8,)])
def test_the_layer_distance_is_dcs_formula(shape):
    g = torch.Generator().manual_seed(len(shape))
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert layer_distance(a, b).item() == pytest.approx(direct_distance(a, b), abs=1e-5)
    if len(shape) > 1:  # a gradient matches itself; its negative is the worst match, 2 per output row
        assert layer_distance(a, a).item() == pytest.approx(0.0, abs=1e-5)
        assert layer_distance(a, -a).item() == pytest.approx(2.0 * shape[0], abs=1e-4)
        assert layer_distance(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-5)  # scale-free per row
    parts = [torch.randn(s, generator=g) for s in ((3, 2), (3,), (2, 3, 1, 1))]
    other = [torch.randn(p.shape, generator=g) for p in parts]
    want = sum(direct_distance(p, q) for p, q in zip(parts, other, strict=True))
    assert match_loss(parts, other).item() == pytest.approx(want, abs=1e-5)


def test_the_loops_are_the_released_codes():
    assert [loops_for(n)[:2] for n in (1, 10, 20, 30, 40, 50)] == [(1, 1), (10, 50), (20, 25), (30, 20), (40, 15),
                                                                    (50, 10)]  # fmt: skip
    assert loops_for(3)[:2] == (1, 1) and loops_for(100)[:2] == (50, 10)  # the nearest listed ipc


def test_each_iteration_alternates_matchings_and_inner_training(digits, monkeypatch):
    """outer_loop matchings (one image step each) with inner_loop epochs of network training between them, on a
    fresh network every iteration."""
    calls = []
    real_fit = dc.fit
    monkeypatch.setattr(dc, "fit", lambda net, x, y, recipe, seed: calls.append((net, recipe.epochs))
                        or real_fit(net, x, y, recipe, seed))  # fmt: skip
    gm = GradientMatching(digits, DCConfig(ipc=2, outer_loop=3, inner_loop=2, **FAST))
    steps = []
    gm.optimizer.step = lambda real=gm.optimizer.step: steps.append(1) or real()
    gm.step(0)
    assert len(steps) == 3 and [e for _, e in calls] == [2, 2] and calls[0][0] is calls[1][0]
    gm.step(1)
    assert len(steps) == 6 and len(calls) == 4 and calls[2][0] is not calls[0][0]


def tiny_classes(per_class: int = 3) -> ds.Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(per_class * 4, 1, 8, 8)).astype(np.uint8)
    y = np.repeat(np.arange(4), per_class)
    return from_arrays("tiny", x, y, x, y, dsa_strategy="crop_cutout_scale_rotate")


@pytest.mark.parametrize("method", ["dsa", "dm"])
def test_real_and_synthetic_batches_get_the_same_transform(method, monkeypatch):
    """With the synthetic images equal to a whole class and the real batch that whole class, one shared DSA
    transform leaves nothing to match (loss ~ 0, rounding aside); drawing the synthetic batch's transform from
    another seed does not."""
    data = tiny_classes()
    options = {"ipc": 3, "init": "real", "real_batch": 3, "net_kwargs": {"width": 8}}
    spec = get_method(method)
    siamese = spec.build(data, spec.config(**options), Context())
    same = siamese.step(0)["loss"]
    assert same < 2e-3  # float32 rounding and the distance's 1e-6 guard leave a few 1e-4
    seen = {}

    def apart(x, strategy, seed):  # the synthetic batch (second call of each pair) gets another transform
        seen[seed] = seen.get(seed, 0) + 1
        return real_dsa(x, strategy, seed=seed + seen[seed] - 1)

    monkeypatch.setattr(matching, "dsa", apart)
    broken = spec.build(data, spec.config(**options), Context())
    assert broken.step(0)["loss"] > max(1e-2, 10 * same)


def test_batchnorm_statistics_come_from_real_images_and_are_frozen_for_the_matching(digits, monkeypatch):
    net = ds.create_net("convnet", (1, 8, 8), 10, depth=2, width=8, norm="batch")
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = norms[0].running_mean.clone()
    dc.freeze_batchnorm(net, digits.train_x[:160])
    assert not torch.equal(before, norms[0].running_mean) and all(not m.training for m in norms)
    modes = []
    real_loss = GradientMatching.matching_loss
    monkeypatch.setattr(
        GradientMatching,
        "matching_loss",
        lambda self, net, w: (
            modes.append([m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
            or real_loss(self, net, w)
        ),
    )
    gm = GradientMatching(digits, DCConfig(ipc=1, real_batch=32, net_kwargs={"width": 8, "norm": "batch"}))
    losses = [gm.step(i)["loss"] for i in range(2)]
    assert modes and all(not any(m) for m in modes) and all(np.isfinite(losses))


def test_the_loss_falls_and_resume_is_exact(digits, tmp_path):
    gm = GradientMatching(digits, DCConfig(ipc=1, outer_loop=4, inner_loop=1, **FAST))
    losses = [gm.step(i)["loss"] for i in range(20)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
    full = ds.distill("dsa", digits, iterations=4, out=tmp_path / "full", **FAST)
    ds.distill("dsa", digits, iterations=2, out=tmp_path / "cut", **FAST)
    resumed = ds.distill("dsa", digits, iterations=4, out=tmp_path / "cut", resume=True, **FAST)
    assert torch.equal(full.images, resumed.images)
    assert resumed.recipe == ds.Standard(dsa=digits.info.dsa_strategy) and resumed.method == "dsa"
    plain = ds.distill("dc", digits, iterations=1, **FAST)
    assert plain.recipe == ds.Standard() and plain.method == "dc"


def test_bad_options_are_refused(digits):
    with pytest.raises(ds.ConfigError, match="lr_img must be > 0"):
        ds.distill("dc", digits, lr_img=0)
    with pytest.raises(ds.ConfigError, match="inner_loop must be >= 1"):
        ds.distill("dsa", digits, inner_loop=0)
    with pytest.raises(ds.DistilsetError, match="ipc 500 needs 500 training images"):
        ds.distill("dc", digits, ipc=500, init="real")


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_default_flags_beat_random_real_on_digits(method, digits):
    """`distill dc|dsa --dataset digits` with nothing else set but a tenth of its budget (100 of 1000
    iterations), scored by the set's recipe beside random real images of the same count."""
    syn = ds.distill(method, digits, iterations=100)
    assert syn.config["ipc"] == 1 and syn.config["init"] == "noise" and syn.config["outer_loop"] == 1
    real = ds.baseline("random", digits, ipc=1)
    real.recipe, real.net = syn.recipe, syn.net
    distilled = ds.evaluate(syn, digits, repeats=2, seed=100)
    random_real = ds.evaluate(real, digits, repeats=2, seed=100)
    assert distilled.accuracy_mean > random_real.accuracy_mean + 0.1, (distilled, random_real)
