"""The evaluation harness: standard and recipe protocols, soft labels, preprocessing carried by the set."""

from __future__ import annotations

import json

import pytest
import torch

import distilset as ds
from distilset.cli import main
from distilset.data.dataset import Normalization
from distilset.errors import ConfigError, DistilsetError
from distilset.evaluate import load_evaluations, training_recipe, transfer_accuracy
from distilset.losses import soft_cross_entropy
from distilset.nets import create_net
from distilset.recipes import Replay, Standard
from distilset.synset import SyntheticSet
from distilset.train import accuracy

SMALL = {"width": 32}


def test_standard_protocol_learns_from_real_subset(digits):
    syn = ds.baseline("random", digits, ipc=10, seed=0)
    res = ds.evaluate(syn, digits, net_kwargs=SMALL, repeats=2, epochs=150, lr=0.05)
    assert res.accuracy_mean > 0.70  # chance is 0.10
    assert res.protocol == "recipe" and res.recipe["epochs"] == 150 and res.seeds == [0, 1] and len(res.runs) == 2
    assert res.recipe["lr"] == 0.05 and res.recipe["kind"] == "standard" and res.wall_time_s > 0
    assert res.to_json()["accuracy_mean"] == res.accuracy_mean


def test_same_seed_same_result_and_dsa_changes_training(digits):
    syn = ds.baseline("random", digits, ipc=5, seed=1)
    kw = {"net_kwargs": SMALL, "repeats": 1, "epochs": 40, "lr": 0.05}
    a, b = ds.evaluate(syn, digits, **kw), ds.evaluate(syn, digits, **kw)
    assert a.runs == b.runs and a.accuracy_mean > 0.3
    c = ds.evaluate(syn, digits, dsa="crop_scale_rotate", **kw)
    assert c.recipe["dsa"] == "crop_scale_rotate" and c.runs != a.runs


def test_soft_cross_entropy_matches_hard_for_one_hot():
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 1, 2])
    assert torch.allclose(soft_cross_entropy(logits, y), soft_cross_entropy(logits, torch.eye(4)[y]))


def test_soft_labels_train(digits):
    syn = ds.baseline("kmeans", digits, ipc=3)
    soft = SyntheticSet(syn.images, torch.eye(10)[syn.labels] * 0.9 + 0.01, syn.class_names, syn.norm)
    res = ds.evaluate(soft, digits, net="mlp", repeats=1, epochs=100, lr=0.05)
    assert res.accuracy_mean > 0.6


def test_recipe_replays_learned_steps_exactly(digits):
    """A recipe set of 3 steps evaluated twice from its fixed init gives the same net as a manual replay."""
    net = create_net("mlp", (1, 8, 8), 10, seed=3)
    init = {k: v.clone() for k, v in net.state_dict().items()}
    base = ds.baseline("mean", digits, ipc=1)
    syn = SyntheticSet(
        base.images,
        base.labels,
        base.class_names,
        base.norm,
        recipe=Replay(init="fixed"),
        lrs=torch.tensor([0.5, 0.3, 0.1]),
        step_order=torch.arange(10).repeat(3, 1),
        init_params=init,
        net={"name": "mlp", "kwargs": {}, "init": "default"},
    )
    res = ds.evaluate(syn, digits, repeats=2)
    assert res.protocol == "recipe" and res.runs[0] == res.runs[1]
    manual = create_net("mlp", (1, 8, 8), 10, seed=99)
    manual.load_state_dict(init)
    for lr in (0.5, 0.3, 0.1):
        loss = soft_cross_entropy(manual(base.images), base.labels)
        grads = torch.autograd.grad(loss, list(manual.parameters()))
        with torch.no_grad():
            for p, g in zip(manual.parameters(), grads, strict=True):
                p -= lr * g
    assert abs(accuracy(manual, digits.test_x, digits.test_y) - res.runs[0]) < 1e-9
    assert res.accuracy_mean > 0.3  # three steps on class means already beat chance (0.1)
    with pytest.raises(DistilsetError, match="learned for net 'mlp'"):
        ds.evaluate(syn, digits, net="convnet", protocol="recipe")


def test_standard_options_need_a_standard_recipe(digits):
    base = ds.baseline("mean", digits, ipc=1)
    syn = SyntheticSet(base.images, base.labels, base.class_names, base.norm, recipe=Replay(),
                       lrs=torch.tensor([0.1]), step_order=torch.arange(10)[None])  # fmt: skip
    with pytest.raises(ConfigError, match="lr set.*add --protocol standard"):
        ds.evaluate(syn, digits, lr=0.1)
    assert training_recipe(syn, "standard", lr=0.1) == Standard(lr=0.1)
    labels = SyntheticSet(base.images, base.labels, base.class_names, base.norm,
                          recipe=Standard(optimizer="adam", lr=1e-3, steps=50, dsa="crop"))  # fmt: skip
    assert training_recipe(labels, "standard") == Standard(dsa="crop")  # DC's protocol, the set's augmentation
    assert training_recipe(labels, epochs=7).steps is None  # an epoch count replaces the step budget
    with pytest.raises(ConfigError, match="unknown training option"):
        ds.evaluate(labels, digits, momentun=0.5)


def test_test_data_follows_the_sets_normalisation(digits):
    """A set stored with other mean/std is evaluated on test images mapped into its own space."""
    syn = ds.baseline("random", digits, ipc=10)
    pixels = digits.info.norm.denormalize(syn.images)
    other = SyntheticSet((pixels - 0.5) / 0.5, syn.labels, syn.class_names, Normalization((0.5,), (0.5,)))
    kw = {"net": "mlp", "repeats": 1, "epochs": 60, "lr": 0.05}
    same, moved = ds.evaluate(syn, digits, **kw).accuracy_mean, ds.evaluate(other, digits, **kw).accuracy_mean
    assert moved > 0.7 and abs(same - moved) < 0.05
    zca_data = digits.with_zca()
    zsyn = ds.baseline("random", zca_data, ipc=10)
    assert zsyn.zca is not None
    assert ds.evaluate(zsyn, digits, **kw).accuracy_mean > 0.6  # the set's ZCA is applied to raw test data


def test_mismatched_dataset_is_refused(digits, tmp_path):
    np = pytest.importorskip("numpy")
    x = np.random.default_rng(0).integers(0, 17, (200, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "other.npz", x_train=x, y_train=np.arange(200) % 10, class_names=np.array(list("abcdefghij")))
    other = ds.load_dataset(f"npz:{tmp_path / 'other.npz'}")
    with pytest.raises(DistilsetError, match="made from digits .* evaluated on npz:.*evaluate it on dataset digits"):
        ds.evaluate(ds.baseline("random", digits, ipc=1), other)
    syn = SyntheticSet(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), ("a", "b"))
    with pytest.raises(DistilsetError, match="evaluate on the dataset the set was made from"):
        ds.evaluate(syn, digits)
    with pytest.raises(DistilsetError, match="unknown protocol"):
        ds.evaluate(ds.baseline("random", digits, ipc=1), digits, protocol="best")


def test_divergence_is_reported(digits):
    syn = ds.baseline("random", digits, ipc=2)
    with pytest.raises(DistilsetError, match=r"diverged.*with learning rate 1e\+06; train with a lower one"):
        ds.evaluate(syn, digits, net="mlp", repeats=1, epochs=50, lr=1e6)


def test_negative_soft_label_mass_is_named_when_training_diverges(digits):
    base = ds.baseline("random", digits, ipc=2)
    soft = torch.eye(10)[base.labels] * 2 - 0.5  # DD's learned labels may go negative: CE is then unbounded below
    syn = SyntheticSet(base.images, soft, base.class_names, base.norm, recipe=Replay(), lrs=torch.tensor([0.1]),
                       step_order=torch.arange(20)[None])  # fmt: skip
    with pytest.raises(DistilsetError, match="negative entries.*protocol recipe"):
        ds.evaluate(syn, digits, protocol="standard", net="mlp", repeats=1, epochs=300, lr=0.1)


def test_adam_optimizer_option(digits):
    syn = ds.baseline("kmeans", digits, ipc=5)
    res = ds.evaluate(syn, digits, net="mlp", repeats=1, epochs=100, optimizer="adam", lr=1e-3)
    assert res.recipe["optimizer"] == "adam" and res.accuracy_mean > 0.6
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adam"):
        ds.evaluate(syn, digits, net="mlp", repeats=1, epochs=1, optimizer="lbfgs")


def replay_set(digits) -> SyntheticSet:
    base = ds.baseline("mean", digits, ipc=1)
    init = {k: v.clone() for k, v in create_net("mlp", (1, 8, 8), 10, seed=3).state_dict().items()}
    return SyntheticSet(base.images, base.labels, base.class_names, base.norm, recipe=Replay(init="fixed"),
                        lrs=torch.tensor([0.5, 0.3]), step_order=torch.arange(10).repeat(2, 1), init_params=init,
                        net={"name": "mlp", "kwargs": {}, "init": "default"})  # fmt: skip


def test_cross_architecture_evaluation_gives_each_net_a_row_and_a_transfer_mean(digits):
    """The set's own net keeps its recipe (here a replay of learned steps); other nets cannot replay steps
    learned for another architecture, so they train by DC's protocol; the transfer mean is over the others."""
    syn = replay_set(digits)
    results = ds.evaluate_nets(syn, digits, ["mlp", "convnet", "convnet-bn"], repeats=1, seed=5)
    assert [r.net for r in results] == ["mlp", "convnet", "convnet-bn"]
    assert [r.protocol for r in results] == ["recipe", "standard", "standard"]
    assert results[0].accuracy_mean == ds.evaluate(syn, digits, repeats=1, seed=5).accuracy_mean
    alone = ds.evaluate(syn, digits, net="convnet", protocol="standard", repeats=1, seed=5)
    assert results[1].runs == alone.runs
    transfer = transfer_accuracy(results, "mlp")
    assert transfer == pytest.approx((results[1].accuracy_mean + results[2].accuracy_mean) / 2)
    with pytest.raises(ConfigError, match="unknown net.*resnet99.*known: alexcifarnet"):
        ds.evaluate_nets(syn, digits, ["mlp", "resnet99"])


def test_cli_evaluate_nets_prints_a_table_and_refuses_net_options(digits, tmp_path, capsys):
    from distilset.cli import main

    ds.baseline("random", digits, ipc=1, seed=0).save(tmp_path / "set", grid=False)
    argv = ["evaluate", str(tmp_path / "set"), "--dataset", "digits", "--repeats", "1", "--epochs", "5"]
    assert main([*argv, "--nets", "convnet,mlp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["net"] for r in out["results"]] == ["convnet", "mlp"] and out["own_net"] == "convnet"
    assert out["transfer_mean"] == out["results"][1]["accuracy_mean"]
    assert main([*argv, "--nets", "convnet,mlp", "--net", "lenet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distilset: error: --nets takes each network"), err


def test_a_result_at_chance_is_flagged_in_the_output_and_the_json(digits, tmp_path, capsys):
    syn = ds.baseline("random", digits, ipc=1)
    good = ds.evaluate(syn, digits, net="mlp", protocol="standard", epochs=30, repeats=1)
    assert good.accuracy_mean > 0.2 and good.warning == ""  # 10 real images learn something
    syn.images.zero_()  # every image the same: nothing to learn, the net answers one class
    syn.save(tmp_path / "blank")
    args = ["--dataset", "digits", "--net", "mlp", "--protocol", "standard", "--epochs", "30", "--repeats", "1"]
    assert main(["evaluate", str(tmp_path / "blank"), *args, "--save"]) == 0
    assert "at chance (10.0 % for 10 classes): the training diverged or did not learn" in capsys.readouterr().out
    assert "at chance" in load_evaluations(tmp_path / "blank")[-1]["warning"]
