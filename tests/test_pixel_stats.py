"""Saving learned pixels at the real images' scale (`--pixel-stats real`, the default for DC, DSA, DM and MTT on a
normalising net): the map is exact and reversible, the methods apply it, and it is what a batch-norm network needs
from a set whose pixels drifted in scale while a normalising network stayed blind to it."""

from __future__ import annotations

import dataclasses

import torch

import distilset as ds
from distilset.methods.dm import DMConfig
from distilset.methods.mtt import MTTConfig


def test_the_map_matches_channel_means_and_the_pixel_scale_and_is_reversible():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(200, 3, 5, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 0.3
    images = torch.randn(12, 3, 5, 5, generator=g) * 6 - 2
    norm = ds.Normalization(mean=(0.5,) * 3, std=(0.25,) * 3)
    syn = ds.SyntheticSet(images=images, labels=torch.arange(12) % 3, class_names=("a", "b", "c"), norm=norm)
    out = syn.with_pixel_stats_of(reference)
    dims = (0, 2, 3)
    assert torch.allclose(out.images.mean(dims), reference.mean(dims), atol=1e-5)
    assert torch.allclose(out.images.var(dims).mean(), reference.var(dims).mean(), rtol=1e-4)  # one pixel scale
    ratio = out.images.std(dims) / images.std(dims)
    assert torch.allclose(ratio, ratio[0].expand(3), rtol=1e-4)  # the channels keep their learned proportions
    back = out.as_learned()
    assert torch.allclose(back.images, images, atol=1e-4) and "learned_pixel_stats" not in back.extra
    assert syn.as_learned() is syn  # nothing to undo
    assert torch.equal(syn.images, images)  # the original set is untouched


def test_the_default_follows_the_distillation_net(digits):
    assert DMConfig().resolve(digits)[0].pixel_stats == "real"  # ConvNet, instance norm
    assert DMConfig(net="lenet").resolve(digits)[0].pixel_stats == "learned"
    assert DMConfig(net_kwargs={"norm": "none"}).resolve(digits)[0].pixel_stats == "learned"
    assert DMConfig(net_kwargs={"norm": "layer"}).resolve(digits)[0].pixel_stats == "learned"  # one group: no
    assert DMConfig(net="convnet-bn").resolve(digits)[0].pixel_stats == "real"
    assert MTTConfig().resolve(digits)[0].pixel_stats == "real"
    assert DMConfig(net="lenet", pixel_stats="real").resolve(digits)[0].pixel_stats == "real"  # given wins


def test_dm_saves_rescaled_images_and_keeps_the_learned_ones_on_request(digits, tmp_path):
    fast = {"ipc": 2, "real_batch": 32, "lr_img": 20.0, "net_kwargs": {"width": 16}}
    scaled = ds.distill("dm", digits, iterations=5, out=tmp_path / "a", **fast)
    kept = ds.distill("dm", digits, iterations=5, out=tmp_path / "b", pixel_stats="learned", **fast)
    dims = (0, 2, 3)
    assert torch.allclose(scaled.images.std(dims), digits.train_x.std(dims), atol=1e-4)  # one channel: its std
    assert not torch.allclose(kept.images.std(dims), digits.train_x.std(dims), atol=1e-2)  # lr 20 moved them
    assert torch.allclose(kept.with_pixel_stats_of(digits.train_x).images, scaled.images, atol=1e-5)
    loaded = ds.SyntheticSet.load(tmp_path / "a")  # the learned statistics survive the file
    assert torch.allclose(loaded.as_learned().images, kept.images, atol=1e-4)


def test_a_batch_norm_net_needs_the_real_scale_and_an_instance_norm_net_does_not(digits):
    """Real images blown up four times (MTT's drift): batch norm, trained on them, meets real test images
    outside its running statistics; mapped back to the real scale it learns from them as from the originals."""
    real = ds.baseline("random", digits, ipc=10, seed=0)
    drifted = dataclasses.replace(real, images=real.images * 4 + 1)
    mapped = drifted.with_pixel_stats_of(digits.train_x)
    kw = {"protocol": "standard", "repeats": 2, "seed": 3, "epochs": 150, "net_kwargs": {"width": 16}}
    bn_drifted = ds.evaluate(drifted, digits, net="convnet-bn", **kw).accuracy_mean
    bn_mapped = ds.evaluate(mapped, digits, net="convnet-bn", **kw).accuracy_mean
    in_drifted = ds.evaluate(drifted, digits, net="convnet", **kw).accuracy_mean
    in_mapped = ds.evaluate(mapped, digits, net="convnet", **kw).accuracy_mean
    assert bn_mapped > bn_drifted + 0.2, (bn_drifted, bn_mapped)
    assert abs(in_mapped - in_drifted) < 0.05, (in_drifted, in_mapped)
