"""Data-parallel distillation on torch.distributed: 2 gloo processes under torchrun give the set one process gives."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import distilset as ds
from distilset.distributed import Shards, current


def _distill(out, *extra, ranks=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = [*(launcher if ranks > 1 else [sys.executable]), "-m", "distilset.cli", "distill", *extra, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _images(path):
    return ds.SyntheticSet.load(path).images


def test_without_a_process_group_this_is_rank_0_of_1():
    assert current() == Shards(0, 1)
    assert [Shards(1, 3).mine(c) for c in range(6)] == [False, True, False, False, True, False]


def test_two_processes_give_the_set_of_one_and_resume_with_one(tmp_path):
    args = ["dm", "--dataset", "digits", "--checkpoint-every", "1"]
    one = _distill(tmp_path / "one", *args, "--iterations", "4")
    two = _distill(tmp_path / "two", *args, "--iterations", "4", ranks=2)
    first = _distill(tmp_path / "split", *args, "--iterations", "2", ranks=2)
    second = _distill(tmp_path / "split", *args, "--iterations", "4", "--resume")
    for run in (one, two, first, second):
        assert run.returncode == 0, run.stderr
    assert two.stdout.count("wrote ") == 1  # rank 0 reports, once
    assert "resuming" in second.stderr + second.stdout
    a = _images(tmp_path / "one")
    assert (a - _images(tmp_path / "two")).abs().max() < 1e-5
    assert (a - _images(tmp_path / "split")).abs().max() < 1e-5  # 2 iterations on 2 ranks, 2 on one
    digits = ds.load_dataset("digits")
    start = digits.train_x[digits.sample_per_class(10, torch.Generator().manual_seed(0))]
    assert (a - start).abs().max() > 1e-2  # the images did move from their real-image start


def test_dc_on_two_processes_gives_the_set_of_one(tmp_path):
    args = ["dc", "--ipc", "1", "--iterations", "2", "--dataset", "digits"]
    one, two = _distill(tmp_path / "one", *args), _distill(tmp_path / "two", *args, ranks=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert (_images(tmp_path / "one") - _images(tmp_path / "two")).abs().max() < 1e-5


def test_a_method_without_data_parallel_support_is_refused_before_touching_out(tmp_path, monkeypatch, digits):
    from distilset.methods import registry

    (tmp_path / "synset.json").write_text("{}")  # an earlier run that --overwrite would delete
    monkeypatch.setattr(registry, "current", lambda: Shards(0, 2))
    with pytest.raises(
        ds.DistilsetError, match=r"`distill kip` does not run data-parallel \(2 processes\).*dc, dm, dsa"
    ):
        ds.distill("kip", digits, iterations=1, out=tmp_path, overwrite=True)
    assert (tmp_path / "synset.json").exists()
