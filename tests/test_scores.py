"""DD-Ranking's robust scores: the normalisation, each accuracy they come from, the full-data cache that is never
reused for another recipe, the sets without augmentation, the CLI and the report."""

from __future__ import annotations

import json
import math

import pytest

import distilset as ds
from distilset.cli import main
from distilset.report import report
from distilset.scores import load_scores, normalised, scores

QUICK = ds.Standard(optimizer="adam", lr=1e-3, steps=60, batch_size=10)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILSET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "full-accuracy.json"


def kmeans_set(digits, recipe=QUICK):
    syn = ds.baseline("kmeans", digits, ipc=1)
    syn.net, syn.recipe = {"name": "mlp", "kwargs": {}, "init": "default"}, recipe
    return syn


def test_the_normalisation_maps_minus_one_to_one_onto_zero_to_one():
    assert normalised(-1) == pytest.approx(0) and normalised(1) == pytest.approx(1)
    assert normalised(0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))


def test_scores_follow_from_their_accuracies_and_kmeans_beats_random(digits, cache):
    s = scores(kmeans_set(digits), digits, repeats=2, full_steps=150)
    a = {k: v["mean"] for k, v in s.accuracies.items()}
    assert set(a) == {"syn-any", "rdm-any", "syn-hard", "full-hard", "syn-aug", "syn-naug", "rdm-aug", "rdm-naug"}
    assert s.hlr == pytest.approx(a["full-hard"] - a["syn-hard"]) and s.ior == pytest.approx(
        a["syn-any"] - a["rdm-any"]
    )
    assert s.lrs == pytest.approx(normalised(0.5 * s.ior - 0.5 * s.hlr))
    beta = 0.5 * (a["syn-aug"] - a["rdm-aug"]) + 0.5 * (a["syn-naug"] - a["rdm-naug"])
    assert s.ars == pytest.approx(normalised(beta))
    assert s.ior > 0.05  # one k-means centroid per class beats one random image (as in the baselines' tests)
    assert a["full-hard"] > 0.8 and s.hlr > 0  # the full data recovers more than one image per class
    assert "DSA" in s.accuracies["syn-aug"]["recipe"] and "DSA" not in s.accuracies["syn-naug"]["recipe"]
    assert s.accuracies["syn-naug"] == s.accuracies["syn-any"]  # the own recipe has no augmentation: reused


def test_the_full_data_accuracy_is_cached_per_recipe(digits, cache):
    scores(kmeans_set(digits), digits, repeats=1, full_steps=100)
    entries = json.loads(cache.read_text())
    assert len(entries) == 1 and "full_accuracy" in next(iter(entries.values()))["made_by"]
    again = scores(kmeans_set(digits), digits, repeats=1, full_steps=100)
    assert again.accuracies["full-hard"]["cached"] is True and len(json.loads(cache.read_text())) == 1
    other = scores(kmeans_set(digits), digits, repeats=1, full_steps=120)  # another budget: another run
    assert other.accuracies["full-hard"]["cached"] is False and len(json.loads(cache.read_text())) == 2


def test_replay_and_kernel_sets_have_no_augmentation_to_remove(digits):
    dd = ds.distill("dd", digits, iterations=2, net="mlp", steps=2, epochs=1)
    s = scores(dd, digits, repeats=1, full_steps=50)
    assert s.ars is None and "syn-aug" not in s.accuracies and 0 <= s.lrs <= 1


def test_bad_weights_and_counts_are_refused(digits):
    for kw, needle in [({"weight": 1.5}, "weight is a weight"), ({"gamma": -0.1}, "gamma is"),
                       ({"repeats": 0}, "repeats must"), ({"full_steps": 0}, "full_steps must")]:  # fmt: skip
        with pytest.raises(ds.ConfigError, match=needle):
            scores(kmeans_set(digits), digits, **kw)


def test_cli_scores_are_saved_and_shown_by_the_report(digits, tmp_path, capsys):
    kmeans_set(digits).save(tmp_path / "km")
    assert main(["evaluate", str(tmp_path / "km"), "--scores", "--repeats", "1", "--full-steps", "60", "--save"]) == 0
    out = capsys.readouterr().out
    assert "full-hard" in out and "LRS" in out and "recorded in" in out
    [row] = load_scores(tmp_path / "km")
    page = report([tmp_path / "km"], tmp_path / "r.html").read_text()
    assert f"{100 * row['lrs']:.1f}" in page.split("<tr>")[2] and "Robust scores" in page
    assert main(["evaluate", str(tmp_path / "km"), "--scores", "--net", "lenet"]) == 2
    assert "drop --net" in capsys.readouterr().err
    (tmp_path / "km" / "scores.json").write_text('[{"lrs": 7}]')
    assert main(["report", str(tmp_path / "km"), "--out", str(tmp_path / "r2.html")]) == 2
    assert "entry 0 is not recorded scores" in capsys.readouterr().err


def test_kernel_and_imported_sets_are_scored(digits, tmp_path):
    ls = ds.distill("ls", digits, ipc=1)
    s = scores(ls, digits, repeats=1, full_steps=50)
    assert s.ars is None and s.net == "kernel:fc" and s.accuracies["syn-hard"]["net"] == "mlp"
    ds.export_set(ds.baseline("kmeans", digits, ipc=1), "pt", tmp_path / "km.pt")
    imported = ds.import_set("pt", tmp_path / "km.pt", digits)
    assert imported.net["name"] == "convnet" and imported.recipe == ds.Standard()  # as imported: DC's protocol
    imported.net, imported.recipe = {"name": "mlp", "kwargs": {}, "init": "default"}, QUICK  # quicker to score
    s = scores(imported, digits, repeats=1, full_steps=50)
    assert s.ior > 0 and s.ars is not None  # DC's protocol, the dataset's DSA for the run with augmentation


@pytest.mark.heavy
def test_a_teacher_recipe_set_is_scored_with_its_teacher(digits, digits_teacher):
    rded = ds.distill("rded", digits, ipc=1, teacher=str(digits_teacher))
    s = scores(rded, digits, repeats=1, full_steps=100)
    assert "teacher" in s.accuracies["rdm-any"]["recipe"] or s.accuracies["rdm-any"]["recipe"].startswith("adamw")
    assert s.ars is not None and s.accuracies["syn-naug"]["mean"] > 0.2
