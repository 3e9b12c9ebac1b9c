"""Baselines: each is what it claims to be, and each scores well above chance (10 %) on digits."""

from __future__ import annotations

import pytest
import torch

import distilset as ds
from distilset.baselines import herding_select, kmeans_centroids
from distilset.errors import DistilsetError


@pytest.mark.parametrize("name", ["random", "mean", "kmeans", "herding"])
def test_baseline_gives_ipc_per_class_and_trains_a_net(digits, name):
    syn = ds.baseline(name, digits, ipc=10, seed=0)
    assert len(syn) == 100 and torch.bincount(syn.labels).tolist() == [10] * 10
    res = ds.evaluate(syn, digits, net="mlp", repeats=1, epochs=100, lr=0.05)
    assert res.accuracy_mean > 0.6, f"{name}: {res}"  # chance is 0.1; these sets are real or averaged digits


def test_kmeans_and_class_means_beat_random_images_at_one_per_class(digits):
    """The summarising baselines carry more of each class than one random image (48 vs 75 % in the README)."""
    kw = {"net": "mlp", "repeats": 3, "epochs": 100, "lr": 0.05}
    random = ds.evaluate(ds.baseline("random", digits, ipc=1, seed=0), digits, **kw).accuracy_mean
    for name in ("kmeans", "mean"):
        summary = ds.evaluate(ds.baseline(name, digits, ipc=1, seed=0), digits, **kw).accuracy_mean
        assert summary > random + 0.1, (name, summary, random)


def test_random_subset_is_real_and_distinct(digits):
    syn = ds.baseline("random", digits, ipc=5, seed=3)
    flat = digits.train_x.reshape(len(digits.train_x), -1)
    for img, label in zip(syn.images, syn.labels, strict=True):
        match = (flat == img.reshape(1, -1)).all(1).nonzero()
        assert len(match) >= 1 and int(digits.train_y[match[0, 0]]) == int(label)
    assert len(torch.unique(syn.images.reshape(len(syn), -1), dim=0)) == len(syn)
    other = ds.baseline("random", digits, ipc=5, seed=4)
    assert not torch.equal(syn.images, other.images)


def test_class_mean_at_ipc1(digits):
    syn = ds.baseline("mean", digits, ipc=1)
    for c in range(10):
        assert torch.allclose(syn.images[c], digits.train_x[digits.train_y == c].mean(0), atol=1e-5)


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centres])
    found = kmeans_centroids(x, 3, torch.Generator().manual_seed(1))
    dist = torch.cdist(found, centres).min(1).values
    assert dist.max() < 0.2


def test_herding_tracks_the_mean_better_than_random():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 16, generator=g)
    mu = feats.mean(0)
    chosen = herding_select(feats, 10)
    assert len(set(chosen.tolist())) == 10
    herd_err = (feats[chosen].mean(0) - mu).norm()
    rand_errs = [(feats[torch.randperm(200, generator=g)[:10]].mean(0) - mu).norm() for _ in range(50)]
    assert herd_err < min(rand_errs)


def test_full_and_errors(digits):
    full = ds.baseline("full", digits)
    assert len(full) == len(digits.train_x)
    with pytest.raises(DistilsetError, match="needs 1000 training images of every class; class .* the fewest: use"):
        ds.baseline("random", digits, ipc=1000)
    with pytest.raises(DistilsetError, match="unknown baseline"):
        ds.baseline("coreset", digits, ipc=1)


def test_every_baseline_gives_exactly_ipc_per_class_at_large_ipc(digits):
    # 139 images split into 50 parts: torch.chunk would give only 47 parts; each class must still get 50.
    for name in ("random", "mean", "kmeans", "herding"):
        syn = ds.baseline(name, digits, ipc=50)
        assert torch.bincount(syn.labels).tolist() == [50] * 10, name


def test_cli_random_like_a_set_takes_its_count_net_and_recipe(digits, tmp_path, capsys):
    from distilset.cli import main

    syn = ds.baseline("kmeans", digits, ipc=3)
    syn.net = {"name": "mlp", "kwargs": {"width": 64}, "init": "default"}
    syn.recipe = ds.Standard(optimizer="adam", lr=1e-3, steps=40, batch_size=10)
    syn.save(tmp_path / "set")
    assert main(["baseline", "random", "--dataset", "digits", "--like", str(tmp_path / "set"), "--out",
                 str(tmp_path / "real")]) == 0  # fmt: skip
    real = ds.SyntheticSet.load(tmp_path / "real")
    assert len(real) == 30 and real.method == "random" and real.recipe == syn.recipe and real.net == syn.net
    assert torch.bincount(real.labels).tolist() == [3] * 10
    assert not any(
        torch.equal(a, b) for a, b in zip(real.images, syn.images, strict=True)
    )  # real images, not the set's
    capsys.readouterr()
    for argv, needle in [(["--ipc", "3"], "drop --ipc"), (["--dataset", "fashion-mnist"], "was made from digits")]:
        full = ["baseline", "random", "--dataset", "digits", "--like", str(tmp_path / "set"), "--out",
                str(tmp_path / "x"), *argv]  # fmt: skip
        assert main(full) == 2 and needle in capsys.readouterr().err


def test_random_real_like_a_replay_set_takes_its_slots_steps_and_init(digits):
    syn = ds.distill("dd", digits, iterations=2, net="mlp", steps=2, epochs=1)
    real = ds.random_real_like(syn, digits, seed=3)
    assert real.recipe == syn.recipe and torch.equal(real.lrs, syn.lrs) and torch.equal(real.step_order, syn.step_order)
    assert all(torch.equal(real.init_params[k], v) for k, v in syn.init_params.items())
    assert torch.equal(real.labels, syn.hard_labels())  # each real image sits in a slot of its own class
    pool = {tuple(x.flatten().tolist()) for x in digits.train_x}
    assert all(tuple(x.flatten().tolist()) in pool for x in real.images)


def test_random_real_like_matches_an_unbalanced_set_class_by_class(digits):
    syn = ds.baseline("random", digits, ipc=3)
    keep = torch.tensor([0, 1, 2, 3, 4, 6, 9, 12, 15, 18, 21, 24, 27])  # class 0 three times, 1 twice, the rest once
    syn = ds.SyntheticSet(syn.images[keep], syn.labels[keep], syn.class_names, syn.norm, dataset="digits")
    real = ds.random_real_like(syn, digits)
    assert torch.equal(torch.bincount(real.labels, minlength=10), torch.bincount(syn.labels, minlength=10))
