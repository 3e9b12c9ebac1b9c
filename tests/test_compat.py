"""Sets, checkpoints, teachers and experts written by an earlier release still load, and its runs resume to the
same set as an uninterrupted run of that release (fixtures: ``tests/fixtures/make_fixtures.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import distilset as ds
from distilset.methods.experts import ExpertBuffer

FIXTURES = sorted(p for p in (Path(__file__).parent / "fixtures").iterdir() if (p / "manifest.json").is_file())
RUNS = [(root, method) for root in FIXTURES for method in json.loads((root / "manifest.json").read_text())["runs"]]


def _ids(case) -> str:
    return f"{case[0].name}-{case[1]}"


@pytest.fixture(scope="module")
def digits():
    return ds.load_dataset("digits")


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """A writable copy of a fixture release, as the working directory (its runs name the teacher relative to it)."""

    def make(root: Path) -> Path:
        where = tmp_path / root.name
        shutil.copytree(root, where)
        monkeypatch.chdir(where)
        return where

    return make


def _same(a: ds.SyntheticSet, b: ds.SyntheticSet) -> None:
    assert torch.allclose(a.images, b.images, atol=1e-5, rtol=1e-4)
    assert torch.allclose(a.labels, b.labels, atol=1e-5, rtol=1e-4)
    assert (a.lrs is None) == (b.lrs is None)
    if a.lrs is not None:
        assert torch.allclose(a.lrs, b.lrs, atol=1e-6, rtol=1e-4)
    assert a.recipe == b.recipe
    assert a.method == b.method and a.dataset == b.dataset


@pytest.mark.parametrize("case", RUNS, ids=_ids)
def test_a_release_s_set_loads_and_its_run_resumes_to_the_same_set(case, digits, copy):
    root, method = case
    run = json.loads((root / "manifest.json").read_text())["runs"][method]
    where = copy(root)
    final = ds.SyntheticSet.load(where / method / "final")
    final.validate()
    assert final.method == method and len(final) > 0
    if not run["resume"]:
        return
    resumed = ds.distill(method, digits, iterations=run["iterations"], out=Path(method, "run"), resume=True,
                         **run["options"])  # fmt: skip
    _same(resumed, final)
    _same(ds.SyntheticSet.load(where / method / "run"), final)


@pytest.mark.parametrize("root", FIXTURES, ids=lambda r: r.name)
def test_a_release_s_teacher_experts_and_baseline_load(root, digits):
    teacher = ds.load_teacher(root / "teacher")
    assert teacher.module(digits.test_x[:4]).shape == (4, digits.num_classes)
    experts = ExpertBuffer(root / "experts")
    assert len(experts) == json.loads((root / "manifest.json").read_text())["experts"]["experts"]
    random = ds.SyntheticSet.load(root / "random")
    assert random.method == "random" and len(random) == 2 * digits.num_classes
    assert torch.equal(random.hard_labels().bincount(), torch.full((digits.num_classes,), 2))
