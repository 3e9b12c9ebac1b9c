"""Teacher-student systems (`distilset teach`): the claims of the papers reproduced in direction with defaults, the
pieces they are built from, what a run writes, and the command line."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distilset as ds
from distilset.cli import main
from distilset.teach import SYSTEMS, load_model, teach
from distilset.teach.fedmd import collaborate, parse_net
from distilset.teach.noisy import NoisyConfig, confusion_graph, corrupt, partners
from distilset.teach.omni import OmniConfig, keep_rule, views
from distilset.train import MixedBatches


@pytest.fixture(scope="module")
def mnist5k():
    return ds.load_dataset("mnist5k")


def test_three_systems_registered():
    assert sorted(SYSTEMS) == ["fedmd", "noisy", "omni"]


# ---- the shared mixed-minibatch plan ------------------------------------------------------------------------
@given(n_first=st.integers(1, 40), n_rest=st.integers(1, 200), batch=st.integers(2, 64),
       share=st.floats(0.05, 0.95))  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_mixed_batches_take_the_share_from_each_part(n_first, n_rest, batch, share):
    plan = MixedBatches(n_first, n_rest, batch, share)
    batches = list(plan.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == plan.per_epoch
    first = min(max(1, round(share * batch)), batch - 1)
    for b in batches:
        assert len(b) == batch
        assert int((b < n_first).sum()) == first
        assert int((b >= n_first + n_rest).sum()) == 0
    # each part is cycled: within a part, every index is used before any repeats
    taken = torch.cat([b[b < n_first] for b in batches])
    counts = torch.bincount(taken, minlength=n_first)
    assert int(counts.max() - counts.min()) <= 1


# ---- omni-supervised data distillation ----------------------------------------------------------------------
def test_omni_views_shift_scale_and_flip():
    x = torch.zeros(1, 1, 14, 14)
    x[0, 0, 5, 6] = 1.0
    cfg = OmniConfig(shift=2, scales=(1.2,), flip=True)
    out = views(x, cfg)
    assert len(out) == 1 + 4 + 1 + 1
    assert torch.equal(out[0], x)
    moved = out[1][0, 0]  # shifted right by 2 pixels
    assert moved[5, 8] == pytest.approx(1.0, abs=1e-5) and moved[5, 6] == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(out[-1], x.flip(3))
    assert len(views(x, OmniConfig(shift=1, scales=(0.9, 1.1), flip=False))) == 7


def test_omni_keep_rule_keeps_the_expected_share():
    conf = torch.linspace(0.2, 1.0, 1001)
    kept, threshold = keep_rule(conf, None)
    assert abs(float(kept.float().mean()) - float(conf.mean())) < 0.01
    assert bool((conf[kept] >= threshold).all()) and bool((conf[~kept] < threshold).all())
    kept, threshold = keep_rule(conf, 0.9)
    assert threshold == 0.9 and int(kept.sum()) == int((conf >= 0.9).sum())


@pytest.mark.heavy
def test_omni_with_defaults_student_beats_teacher_and_multi_beats_single(mnist5k):
    # mnist5k, 5 % labelled, LeNet: measured teacher 84.1 %, student 87.7 %, single-view student 85.3 %
    report = teach("omni", mnist5k).report
    assert report["student_accuracy"] > report["teacher_accuracy"] + 0.01
    assert report["student_accuracy"] > report["single_view_student_accuracy"]
    assert report["pseudo_labels"]["accuracy_kept"] > report["pseudo_labels"]["accuracy_all"]
    assert all(c["holds"] for c in report["claims"])


# ---- noisy labels --------------------------------------------------------------------------------------------
def test_noise_partners_are_an_involution_and_corruption_has_the_rate(digits):
    partner = partners(digits)
    assert torch.equal(partner[partner], torch.arange(10)) and bool((partner != torch.arange(10)).all())
    y = digits.train_y
    g = torch.Generator().manual_seed(0)
    for noise in ("symmetric", "pairs"):
        noisy = corrupt(y, NoisyConfig(noise=noise, noise_rate=0.4), 10, partner, g)
        wrong = noisy != y
        assert 0.35 < float(wrong.float().mean()) < 0.45
        if noise == "pairs":
            assert torch.equal(noisy[wrong], partner[y[wrong]])


def test_confusion_graph_is_row_stochastic(digits):
    from distilset.teach.base import Model

    model = Model.fresh("mlp", {}, digits.image_shape, 10, seed=0, device="cpu")
    graph = confusion_graph(model, digits.train_x[:200], digits.train_y[:200], 10, 1.0)
    assert graph.shape == (10, 10) and torch.allclose(graph.sum(1), torch.ones(10)) and bool((graph > 0).all())


@pytest.mark.heavy
def test_noisy_with_defaults_an_interior_lambda_beats_both_ends(digits):
    # digits, 40 % symmetric noise, MLP: measured lambda 0 / 1: 88.6 / 90.3 %, interior (0.8) 93.9 %
    report = teach("noisy", digits).report
    by = {r["lambda"]: r["test"] for r in report["sweep"]}
    chosen = report["claims"][0]
    assert 0 < chosen["interior_lambda"] < 1
    assert chosen["interior"] > max(by[0.0], by[1.0]) + 0.01
    assert chosen["interior"] > report["teacher_accuracy"] + 0.02


# ---- FedMD ---------------------------------------------------------------------------------------------------
class _Recorder:
    """A stand-in party: constant scores, records what the server sends."""

    def __init__(self, index, value):
        self.index, self.value, self.digested, self.revisits = index, value, [], 0

    def scores(self, x):
        return torch.full((len(x), 3), float(self.value))

    def digest(self, x, consensus, seed):
        self.digested.append(consensus.clone())

    def revisit(self, epochs, seed):
        self.revisits += epochs


def test_fedmd_server_sends_the_mean_scores_to_every_party():
    from distilset.teach.fedmd import FedMDConfig

    parties = [_Recorder(i, v) for i, v in enumerate((1.0, 2.0, 6.0))]
    cfg = FedMDConfig(rounds=3, public_subset=5, revisit_epochs=2)
    seen = []
    collaborate(parties, torch.randn(20, 4), cfg, seed=0, after_round=lambda r, pick, c: seen.append(pick))
    for p in parties:
        assert len(p.digested) == 3 and p.revisits == 6
        assert all(torch.equal(c, torch.full((5, 3), 3.0)) for c in p.digested)
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1])  # a fresh public subset each round


def test_fedmd_net_specs():
    assert parse_net("convnet:width=16,depth=2") == ("convnet", {"width": 16, "depth": 2})
    assert parse_net("mlp") == ("mlp", {})
    with pytest.raises(ds.ConfigError, match="unknown net"):
        parse_net("vgg")
    with pytest.raises(ds.ConfigError, match="no '='"):
        parse_net("mlp:width")


@pytest.mark.heavy
def test_fedmd_with_defaults_gains_over_transfer_only_from_the_consensus(digits):
    # digits: private classes 0-5, public 6-9, 10 parties x 18 images; measured transfer only 78.1 %, after 20
    # rounds 90.1 %, the same revisits without consensus 88.1 %, pooled 96.0 %
    report = teach("fedmd", digits).report
    assert len(set(report["parties"])) >= 5
    assert report["mean_final"] > report["mean_transfer_only"] + 0.03
    assert report["mean_final"] > report["mean_revisit_only"]
    assert report["mean_final"] < report["mean_pooled"]


def test_fedmd_public_set_of_another_dataset_must_match_the_input_shape(digits, mnist5k):
    with pytest.raises(ds.ConfigError, match="pick a public set of the same shape"):
        teach("fedmd", digits, public="mnist5k", rounds=1)
    with pytest.raises(ds.ConfigError, match="lower private_classes below 10"):
        teach("fedmd", digits, private_classes=10)


# ---- outputs and the command line --------------------------------------------------------------------------
def test_teach_writes_models_labels_report_and_picture(digits, tmp_path):
    out = tmp_path / "run"
    taught = teach("omni", digits, out=out, teacher_steps=60)
    for name in ("models/teacher.safetensors", "models/student.safetensors", "models/student-soft.safetensors",
                 "labels.safetensors", "report.json", "teach.png"):  # fmt: skip
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["system"] == "omni" and report["config"]["teacher_steps"] == 60
    student = load_model(out / "models" / "student.safetensors")
    x = digits.test_x[:50]
    taught.models["student"].module.eval()
    assert torch.allclose(student.module(x), taught.models["student"].module(x), atol=1e-6)
    from safetensors.torch import load_file

    labels = load_file(out / "labels.safetensors")
    assert len(labels["pseudo_label"]) == len(labels["unlabelled_index"]) == report["unlabelled"]
    with pytest.raises(ds.ConfigError, match="already holds a teach run"):
        teach("omni", digits, out=out, teacher_steps=60, baselines=False)
    assert (out / "report.json").read_text() == json.dumps(report, indent=2) + "\n"  # untouched


def test_a_users_own_models_folder_is_not_a_run(digits, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.pt").write_bytes(b"weights")
    (tmp_path / "report.json").write_text("{}")
    teach("omni", digits, out=tmp_path, teacher_steps=30, baselines=False)  # not refused: no teach run there
    teach("omni", digits, out=tmp_path, teacher_steps=30, baselines=False, overwrite=True)
    assert (tmp_path / "models" / "mine.pt").read_bytes() == b"weights"  # overwrite removes only what teach wrote


def test_cli_teach_runs_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["teach", "noisy", "--dataset", "digits", "--out", str(out), "--teacher-steps", "50",
                 "--student-steps", "100", "--lambdas", "0", "0.5", "1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "interior lambda" in printed and (out / "models" / "student.safetensors").is_file()
    for argv, message in [
        (
            ["teach", "omni", "--dataset", "digits", "--out", str(tmp_path / "a"), "--labelled", "1.5"],
            "--labelled must be a share",
        ),
        (
            ["teach", "noisy", "--dataset", "digits", "--out", str(tmp_path / "b"), "--ipc", "3"],
            "see `distilset teach noisy --help`",
        ),
        (
            ["teach", "fedmd", "--dataset", "fashion-mnist", "--out", str(tmp_path / "c"), "--nets", "mlp"],
            "--nets needs at least 2 parties",
        ),
        (["teach", "omni", "--dataset", "digits", "--out", str(out)], "already holds"),
        (["teach", "omni", "--out", str(tmp_path / "d")], "the following arguments are required: --dataset"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distilset: error:") and message in err and "\n" not in err


def test_fedmd_checks_every_partys_net_before_any_party_trains(digits, monkeypatch):
    fedmd = importlib.import_module("distilset.teach.fedmd")  # ds.teach is the function, not the package

    def no_training(*a, **k):
        raise AssertionError("a party trained before the last party's net was checked")

    monkeypatch.setattr(fedmd, "train", no_training)
    with pytest.raises(ds.DistilsetError, match="width .* must be a whole number in 1..4096, got 0"):
        teach("fedmd", digits, nets=("mlp", "mlp", "mlp:width=0"), rounds=1)
