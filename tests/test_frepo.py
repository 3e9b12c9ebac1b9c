"""FRePo: the pool's staggered ages and resets, a falling loss, exact resume, the label margin, the evaluation
recipe, and with default flags a set that beats random real images of the same count on digits."""

from __future__ import annotations

import math

import pytest
import torch

import distilset as ds
from distilset.methods.frepo import FRePo, FRePoConfig, eval_steps, label_margin
from distilset.train import cosine_factor

SMALL = {"ipc": 2, "target_batch": 200, "net_kwargs": {"norm": "none", "width": 16}}


def test_pool_ages_are_staggered_and_networks_reset_past_their_limit(digits):
    frepo = FRePo(digits, FRePoConfig(pool=4, max_online_updates=8, **SMALL))
    assert frepo.ages == [0, 2, 4, 6]
    first = list(frepo.nets)
    for i in range(40):
        frepo.step(i)
    assert all(age <= 9 for age in frepo.ages)
    assert any(new is not old for new, old in zip(frepo.nets, first, strict=True))  # some were re-initialised


def test_the_loss_falls_labels_learn_and_resume_is_exact(digits, tmp_path):
    frepo = FRePo(digits, FRePoConfig(lr=3e-3, **SMALL))  # LAMB steps scale with the weights: small at 3e-4
    labels = frepo.labels.detach().clone()
    losses = [frepo.step(i)["loss"] for i in range(40)]
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8]), losses
    assert not torch.allclose(labels, frepo.labels)
    full = ds.distill("frepo", digits, iterations=4, out=tmp_path / "full", **SMALL)
    ds.distill("frepo", digits, iterations=2, out=tmp_path / "cut", **SMALL)
    resumed = ds.distill("frepo", digits, iterations=4, out=tmp_path / "cut", resume=True, **SMALL)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.labels, resumed.labels)


def test_label_margin_is_the_capped_top_two_gap():
    labels = torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25]])
    assert label_margin(labels).tolist() == pytest.approx([-1 / 3, -0.05])


def test_the_evaluation_recipe_is_frepos(digits):
    syn = ds.distill("frepo", digits, iterations=1, **SMALL)
    r = syn.recipe
    assert (r.optimizer, r.lr, r.loss, r.schedule, r.steps, r.warmup) == ("adam", 3e-4, "mse", "cosine", 1000, 500)
    assert eval_steps(100) == 2000 and eval_steps(10) == 1000 and eval_steps(500) == 5000
    assert cosine_factor(0, 1000, 500) == 0 and cosine_factor(250, 1000, 500) == 0.5
    assert cosine_factor(500, 1000, 500) == 1 and cosine_factor(1000, 1000, 500) == pytest.approx(0.01)
    assert cosine_factor(750, 1000, 500) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.heavy
def test_default_flags_beat_random_real_on_digits(digits):
    """`distill frepo --dataset digits` with default flags but a tenth of its budget (100 of 1000 iterations),
    scored beside random real images of the same count by its recipe shortened to 300 steps (100 warm-up) on the
    same net. At this budget the set leads random real by about one point (8 of 359 test images over 2 nets on
    one machine, 6 on another: the distillation's float sums differ across CPUs), so the test asks for a lead,
    not a margin."""
    syn = ds.distill("frepo", digits, iterations=100)
    assert syn.config["ipc"] == 10 and syn.config["pool"] == 10
    real = ds.baseline("random", digits, ipc=10, seed=0)
    real.recipe, real.net = syn.recipe, syn.net
    distilled = ds.evaluate(syn, digits, repeats=2, seed=100, steps=300, warmup=100)
    random_real = ds.evaluate(real, digits, repeats=2, seed=100, steps=300, warmup=100)
    assert distilled.accuracy_mean > random_real.accuracy_mean, (distilled, random_real)
