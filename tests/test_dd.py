"""Dataset Distillation: every init regime and objective lowers its loss, soft labels, resume, NaN stop,
recipe evaluation, and the digits floors of the fast check."""

from __future__ import annotations

import json

import pytest
import torch

import distilset as ds
from distilset.cli import main
from distilset.errors import ConfigError, DistilsetError
from distilset.methods.base import Context
from distilset.methods.dd import DatasetDistillation, DDConfig
from distilset.nets import create_net
from distilset.train import accuracy, replay

FAST = {"net": "mlp", "steps": 2, "epochs": 2, "real_batch": 256}


def _losses(dd: DatasetDistillation, n: int) -> list[float]:
    return [dd.step(i)["loss"] for i in range(n)]


@pytest.mark.parametrize("init", ["fixed", "random", "fixed-pretrained", "random-pretrained"])
def test_every_init_regime_lowers_the_loss(digits, init):
    cfg = DDConfig(net_init=init, n_nets=2, pool_size=3, pretrain_epochs=3, lr=0.05, init_lr=0.05, **FAST)
    if init.endswith("pretrained"):  # adaptation: the pool only saw classes 0-4
        cfg = DDConfig(**{**cfg.__dict__, "pretrain_classes": (0, 1, 2, 3, 4)})
    dd = DatasetDistillation(digits, cfg, Context(seed=0))
    losses = _losses(dd, 60)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    syn = dd.synthetic_set()
    assert len(syn) == 2 * 10 and syn.recipe.init == init and len(syn.lrs) == 4
    assert (syn.init_params is not None) == init.startswith("fixed")


def test_poisoning_attack_makes_the_attacked_class_fail(digits):
    cfg = DDConfig(net_init="fixed-pretrained", net="mlp", steps=1, epochs=1, attack=(0, 1), pretrain_epochs=20)
    dd = DatasetDistillation(digits, cfg, Context(seed=0))
    losses = _losses(dd, 100)
    assert sum(losses[-5:]) < sum(losses[:5])
    net = create_net("mlp", (1, 8, 8), 10)
    net.load_state_dict(dd.pool[0])
    attacked = digits.test_y == 0
    before = accuracy(net, digits.test_x[attacked], digits.test_y[attacked])
    syn = dd.synthetic_set()
    replay(net, syn.images, syn.labels, syn.lrs, syn.step_order)  # one step on the distilled data
    after = accuracy(net, digits.test_x[attacked], digits.test_y[attacked])
    others = accuracy(net, digits.test_x[~attacked], digits.test_y[~attacked])
    assert before > 0.9 and after < 0.3 and others > 0.8, (before, after, others)


def test_soft_labels_with_fewer_items_than_classes(digits):
    cfg = DDConfig(net_init="fixed", soft_labels=True, items=5, label_init="random", lr=0.02, **FAST)
    dd = DatasetDistillation(digits, cfg, Context(seed=0))
    start = dd.labels.detach().clone()
    before = ds.evaluate(dd.synthetic_set(), digits, repeats=1).accuracy_mean  # noise images, random labels
    losses = _losses(dd, 60)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    syn = dd.synthetic_set()
    assert syn.images.shape == (10, 1, 8, 8) and syn.labels.shape == (10, 10) and syn.soft
    assert not torch.allclose(syn.labels, start)  # the labels were learned
    after = ds.evaluate(syn, digits, repeats=1).accuracy_mean
    assert after > before + 0.15, (before, after)  # 5 items for 10 classes: the replay learned to classify


def test_bad_settings_are_refused_by_the_config(digits):
    with pytest.raises(ConfigError, match="multiple of the 10 classes; add soft_labels"):
        DatasetDistillation(digits, DDConfig(items=5, **FAST))
    with pytest.raises(ConfigError, match="init must be one of fixed, random"):
        DDConfig(net_init="pretrained", **FAST)
    with pytest.raises(ConfigError, match="^lr must be > 0, got -1"):
        DDConfig(lr=-1, **FAST)
    with pytest.raises(ConfigError, match="init_lr must be > 0"):
        DDConfig(init_lr=0, **FAST)
    with pytest.raises(ConfigError, match=r"attack \(0, 12\) names classes outside \[0, 10\)"):
        DDConfig(attack=(0, 12)).resolve(digits)


def test_checkpoint_memory_path_matches_plain(digits):
    a = DatasetDistillation(digits, DDConfig(net_init="fixed", **FAST), Context(seed=1))
    b = DatasetDistillation(digits, DDConfig(net_init="fixed", memory="checkpoint", segment=2, **FAST), Context(seed=1))
    for i in range(3):
        la, lb = a.step(i)["loss"], b.step(i)["loss"]
        assert la == pytest.approx(lb, abs=1e-5)
    assert torch.allclose(a.images, b.images, atol=1e-5)


def test_resume_continues_bit_for_bit(digits, tmp_path):
    opts = {"net_init": "random", "n_nets": 1, **FAST}
    full = ds.distill("dd", digits, iterations=6, out=tmp_path / "full", checkpoint_every=3, **opts)
    ds.distill("dd", digits, iterations=3, out=tmp_path / "part", **opts)
    resumed = ds.distill("dd", digits, iterations=6, out=tmp_path / "part", resume=True, **opts)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lrs, resumed.lrs)
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_part = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [r["loss"] for r in h_full] == [r["loss"] for r in h_part] and len(h_part) == 6
    with pytest.raises(DistilsetError, match="made with steps 2, this run has 3"):
        ds.distill("dd", digits, iterations=8, out=tmp_path / "part", resume=True, **{**opts, "steps": 3})
    with pytest.raises(DistilsetError, match="made with seed 0, not 1"):
        ds.distill("dd", digits, iterations=8, out=tmp_path / "part", resume=True, seed=1, **opts)
    # the outer lr may change on resume (the way out of a NaN stop)
    ds.distill("dd", digits, iterations=7, out=tmp_path / "part", resume=True, **{**opts, "lr": 0.005})
    for fewer in (5, 7):  # a finished run is not rewritten; one further on is not rewound
        with pytest.raises(DistilsetError, match=r"checkpoint at iteration 7\); to continue it, .*iterations above 7"):
            ds.distill("dd", digits, iterations=fewer, out=tmp_path / "part", resume=True, **opts)
    other = ds.load_dataset("mnist5k")
    with pytest.raises(DistilsetError, match="it distils digits .*not mnist5k.*same dataset"):
        ds.distill("dd", other, iterations=9, out=tmp_path / "part", resume=True, **opts)
    (tmp_path / "file").write_text("")
    with pytest.raises(DistilsetError, match="out .* is a file"):
        ds.distill("dd", digits, iterations=1, out=tmp_path / "file", **opts)


def test_nan_stops_after_saving_the_last_good_state(digits, tmp_path, monkeypatch):
    original = DatasetDistillation._real_batch
    calls = {"n": 0}

    def poisoned(self):
        x, y = original(self)
        calls["n"] += 1
        return (x * float("nan"), y) if calls["n"] == 4 else (x, y)

    monkeypatch.setattr(DatasetDistillation, "_real_batch", poisoned)
    with pytest.raises(
        DistilsetError, match=r"outer loss .* \(loss nan\) at outer iteration 3.*saved in .*continue with resume.*lower"
    ):
        ds.distill("dd", digits, iterations=10, out=tmp_path, net_init="fixed", **FAST)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["iteration"] == 3 and torch.isfinite(state["distiller"]["images"]).all()
    monkeypatch.setattr(DatasetDistillation, "_real_batch", original)
    syn = ds.distill("dd", digits, iterations=5, out=tmp_path, resume=True, net_init="fixed", lr=0.005, **FAST)
    assert torch.isfinite(syn.images).all()


def test_recipe_evaluation_reproduces_distillation_time_accuracy(digits, tmp_path):
    syn = ds.distill("dd", digits, iterations=20, out=tmp_path, eval_every=20, net_init="fixed", **FAST)
    history = json.loads((tmp_path / "history.json").read_text())
    loaded = ds.SyntheticSet.load(tmp_path)
    _, validation = digits.validation_split()
    res = ds.evaluate(loaded, validation)
    assert res.protocol == "recipe" and res.runs[0] == history[-1]["val_acc"]
    assert torch.equal(loaded.images, syn.images)
    std = ds.evaluate(loaded, digits, protocol="standard", repeats=1, epochs=20)
    assert std.protocol == "standard" and std.net == "mlp" and std.recipe["kind"] == "standard"


def test_cli_distill_then_evaluate(tmp_path, capsys):
    out = tmp_path / "dd"
    code = main(["distill", "dd", "--dataset", "digits", "--net", "mlp", "--steps", "2", "--epochs", "1",
                 "--iterations", "5", "--out", str(out), "--evaluate", "1"])  # fmt: skip
    assert code == 0 and (out / "grid.png").exists() and (out / "checkpoint" / "state.pt").exists()
    printed = capsys.readouterr().out
    assert "evaluation:" in printed and "replay of the learned steps" in printed
    assert main(["evaluate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["kind"] == "replay"
    assert main(["distill", "dd", "--dataset", "digits", "--attack", "0", "zero", "--out", str(out)]) == 2
    assert "argument --attack: invalid int value: 'zero'" in capsys.readouterr().err
    assert main(["distill", "dd", "--dataset", "digits", "--attack", "3", "3", "--out", str(out)]) == 2
    assert "--attack needs two different classes" in capsys.readouterr().err
    assert main(["distill", "dd", "--preset", "nope", "--out", str(out)]) == 2
    assert "unknown preset" in capsys.readouterr().err


# --- default flags on digits: the net, the decay and the budget are resolved from the dataset -----------------


@pytest.fixture(scope="module")
def random_real_100(digits):
    """100 random real images (10 per class) under DC's protocol on the net DD resolves for digits (an MLP)."""
    return ds.evaluate(ds.baseline("random", digits, ipc=10), digits, net="mlp", repeats=5).accuracy_mean


@pytest.mark.heavy
def test_default_flags_fixed_init_digits(digits, random_real_100):
    syn = ds.distill("dd", digits)
    assert syn.config["net"] == "mlp" and syn.extra["iterations"] == 400 and len(syn) == 100 and len(syn.lrs) == 30
    acc = ds.evaluate(syn, digits, repeats=1).accuracy_mean
    assert acc >= 0.93 and acc > random_real_100, (acc, random_real_100)


@pytest.mark.heavy
def test_default_flags_random_init_digits(digits, random_real_100):
    syn = ds.distill("dd", digits, net_init="random")
    res = ds.evaluate(syn, digits, repeats=10, seed=1000)  # ten held-out inits
    assert res.accuracy_mean >= 0.88 and res.accuracy_mean > random_real_100, (res, random_real_100)


def test_pretrained_sets_evaluate_from_their_inits(digits):
    cfg = DDConfig(net_init="random-pretrained", pool_size=2, pretrain_epochs=2, **FAST)
    dd = DatasetDistillation(digits, cfg, Context(seed=0))
    dd.step(0)
    syn = dd.synthetic_set()
    with pytest.raises(DistilsetError, match="init_pool"):
        ds.evaluate(syn, digits)
    res = ds.evaluate(syn, digits, repeats=2, init_pool=dd.pool)
    manual = []
    for state in dd.pool:
        net = create_net("mlp", (1, 8, 8), 10)
        net.load_state_dict(state)
        replay(net, syn.images, syn.labels, syn.lrs, syn.step_order)
        manual.append(accuracy(net, digits.test_x, digits.test_y))
    assert res.runs == manual
    cfg = DDConfig(net_init="fixed-pretrained", pretrain_epochs=2, **FAST)
    fixed = DatasetDistillation(digits, cfg, Context(seed=0))
    fixed_set = fixed.synthetic_set()
    assert torch.equal(fixed_set.init_params["classifier.weight"], fixed.pool[0]["classifier.weight"])
    net = create_net("mlp", (1, 8, 8), 10)
    net.load_state_dict(fixed.pool[0])
    replay(net, fixed_set.images, fixed_set.labels, fixed_set.lrs, fixed_set.step_order)
    assert ds.evaluate(fixed_set, digits, repeats=1).runs[0] == accuracy(net, digits.test_x, digits.test_y)
