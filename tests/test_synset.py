"""SyntheticSet: bit-exact save/load round trip, refusal of malformed files, the grid picture."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import distilset as ds
from distilset.data.dataset import Normalization
from distilset.data.zca import ZCA
from distilset.errors import SynsetFormatError
from distilset.nets import create_net
from distilset.recipes import Replay, Standard
from distilset.synset import SyntheticSet


def _full_set() -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 1, 8, 8, generator=g)
    net = create_net("lenet", (1, 8, 8), 3, seed=0)
    return SyntheticSet(
        images=images,
        labels=torch.softmax(torch.randn(6, 3, generator=g), 1),
        class_names=("a", "b", "c"),
        norm=Normalization((0.5,), (0.25,)),
        dataset="digits",
        method="dd",
        zca=ZCA.fit(torch.randn(100, 1, 8, 8, generator=g)),
        lrs=torch.rand(4, generator=g).double(),
        step_order=torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]),
        init_params={k: v.clone() for k, v in net.state_dict().items()},
        recipe=Replay(init="fixed"),
        net={"name": "lenet", "kwargs": {}, "init": "xavier"},
        config={"steps": 2, "epochs": 2},
        extra={"note": "test"},
    )


def test_round_trip_is_bit_exact(tmp_path):
    syn = _full_set()
    syn.save(tmp_path / "s")
    back = SyntheticSet.load(tmp_path / "s")
    for name in ("images", "labels", "lrs", "step_order"):
        a, b = getattr(syn, name), getattr(back, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(syn.zca.matrix, back.zca.matrix) and torch.equal(syn.zca.mean, back.zca.mean)
    assert syn.init_params.keys() == back.init_params.keys()
    assert all(torch.equal(syn.init_params[k], back.init_params[k]) for k in syn.init_params)
    for name in ("class_names", "norm", "dataset", "method", "recipe", "net", "config", "extra"):
        assert getattr(syn, name) == getattr(back, name), name


def test_standard_recipe_round_trip_and_version_1_sets(tmp_path):
    recipe = Standard(optimizer="adam", lr=0.0123, weight_decay=0.0, batch_size=10, steps=77, schedule="constant",
                      dsa="color_crop", crop=(8, 8))  # fmt: skip
    syn = SyntheticSet(torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1]), ("a", "b"), recipe=recipe)
    syn.save(tmp_path / "s")
    assert SyntheticSet.load(tmp_path / "s").recipe == recipe
    assert (tmp_path / "s" / "tiles.png").exists()  # a set trained on crops is a texture: its tiling is shown
    # A version-1 file (before typed recipes): its learned lr, DSA strategy and crop become a Standard recipe.
    meta = json.loads((tmp_path / "s" / "synset.json").read_text())
    del meta["recipe"]
    meta.update(version=1, train_lr=0.5, dsa_strategy="crop", init_regime=None, extra={"texture": {"crop": [8, 8]}},
                net={"name": "convnet", "kwargs": {"width": 8}, "init": "default"})  # fmt: skip
    (tmp_path / "s" / "synset.json").write_text(json.dumps(meta))
    old = SyntheticSet.load(tmp_path / "s")
    assert old.recipe == Standard(lr=0.5, dsa="crop", crop=(8, 8))
    assert old.net["kwargs"] == {"width": 8, "depth": 3}  # version-1 ConvNets had depth 3 whatever the input
    for broken in ({"texture": True}, "not a dict"):  # malformed metadata is a format error, not a traceback
        (tmp_path / "s" / "synset.json").write_text(json.dumps({**meta, "extra": broken}))
        with pytest.raises(SynsetFormatError, match=r"extra(\.texture)? must be an object"):
            SyntheticSet.load(tmp_path / "s")


def test_files_are_written_with_the_umask_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        SyntheticSet(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), ("a", "b")).save(tmp_path)
    finally:
        os.umask(old)
    for name in ("synset.json", "synset.safetensors", "grid.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_hard_labels_and_grid(tmp_path):
    syn = SyntheticSet(
        torch.rand(6, 3, 8, 8),
        torch.tensor([0, 0, 1, 1, 2, 2]),
        ("a", "b", "c"),
        norm=Normalization((0.1, 0.2, 0.3), (1.0, 1.0, 1.0)),
    )
    syn.save(tmp_path)
    back = SyntheticSet.load(tmp_path)
    assert back.labels.dtype == torch.int64 and torch.equal(back.labels, syn.labels)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[1] >= 3 * 32  # one row per class, tiny images upscaled
    assert torch.allclose(back.to_pixels(), (syn.images + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)).clamp(0, 1))


def test_save_overwrites_atomically_without_temp_files(tmp_path):
    syn = _full_set()
    syn.save(tmp_path)
    syn.images = syn.images + 1
    syn.save(tmp_path)
    assert torch.equal(SyntheticSet.load(tmp_path).images, syn.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "synset.json", "synset.safetensors"]


def test_corrupt_files_are_refused(tmp_path):
    _full_set().save(tmp_path)
    tensors = (tmp_path / "synset.safetensors").read_bytes()
    meta = json.loads((tmp_path / "synset.json").read_text())

    (tmp_path / "synset.safetensors").write_bytes(tensors[: len(tensors) // 2])
    with pytest.raises(SynsetFormatError, match="unreadable"):
        SyntheticSet.load(tmp_path)
    (tmp_path / "synset.safetensors").write_bytes(tensors)

    (tmp_path / "synset.json").write_text("{not json")
    with pytest.raises(SynsetFormatError, match="not valid JSON"):
        SyntheticSet.load(tmp_path)

    (tmp_path / "synset.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(SynsetFormatError, match="version 99"):
        SyntheticSet.load(tmp_path)

    bad = json.loads(json.dumps(meta))
    bad["tensors"]["images"]["shape"] = [5, 1, 8, 8]
    (tmp_path / "synset.json").write_text(json.dumps(bad))
    with pytest.raises(SynsetFormatError, match="do not belong together"):
        SyntheticSet.load(tmp_path)

    bad = json.loads(json.dumps(meta))
    bad["class_names"] = ["a", "b"]  # soft labels have 3 columns
    (tmp_path / "synset.json").write_text(json.dumps(bad))
    with pytest.raises(SynsetFormatError, match="soft labels have 3 columns but there are 2 class_names"):
        SyntheticSet.load(tmp_path)

    (tmp_path / "synset.json").unlink()
    with pytest.raises(SynsetFormatError, match="not a saved synthetic set"):
        SyntheticSet.load(tmp_path)


def test_validation_rejects_bad_sets():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(SynsetFormatError, match="4 images but 3 labels"):
        SyntheticSet(x, torch.tensor([0, 1, 0]), ("a", "b"))
    with pytest.raises(SynsetFormatError, match=r"labels must lie in \[0, 2\)"):
        SyntheticSet(x, torch.tensor([0, 1, 2, 0]), ("a", "b"))
    with pytest.raises(SynsetFormatError, match="NaN"):
        SyntheticSet(x * float("nan"), torch.tensor([0, 1, 1, 0]), ("a", "b"))
    with pytest.raises(SynsetFormatError, match="item indices"):
        SyntheticSet(x, torch.tensor([0, 1, 1, 0]), ("a", "b"), lrs=torch.ones(1), step_order=torch.tensor([[0, 9]]))
    with pytest.raises(SynsetFormatError, match="replay recipe needs the learned lrs"):
        SyntheticSet(x, torch.tensor([0, 1, 1, 0]), ("a", "b"), recipe=Replay())
    with pytest.raises(SynsetFormatError, match="stored init"):
        order = torch.tensor([[0, 1]])
        SyntheticSet(x, torch.tensor([0, 1, 1, 0]), ("a", "b"), recipe=Replay("fixed"), lrs=torch.ones(1),
                     step_order=order)  # fmt: skip


def test_a_recipe_that_breaks_its_own_rules_is_refused(tmp_path):
    SyntheticSet(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), ("a", "b")).save(tmp_path)
    meta = json.loads((tmp_path / "synset.json").read_text())
    for bad, message in (({"kind": "standard", "lr": -1}, "lr must be > 0"), ({"kind": "sgd"}, "unknown training"),
                         ({"kind": "standard", "speed": 3}, "unknown fields")):  # fmt: skip
        (tmp_path / "synset.json").write_text(json.dumps({**meta, "recipe": bad}))
        with pytest.raises(SynsetFormatError, match=message):
            SyntheticSet.load(tmp_path)


def test_a_set_prints_as_one_line_and_settings_print_rounded(digits):
    from distilset.methods.dd import DDConfig
    from distilset.methods.registry import describe_config

    syn = ds.baseline("random", digits, ipc=2)
    line = repr(syn)
    assert "\n" not in line and "tensor(" not in line and str(syn) == line
    assert line.startswith("SyntheticSet(20 items of (1, 8, 8), 10 classes, hard labels, method random")
    cfg, notes = DDConfig().resolve(digits)
    printed = " ".join(describe_config(cfg, notes))
    assert f"decay_epochs={cfg.decay_epochs:.6g}" in printed and repr(cfg.decay_epochs) not in printed
