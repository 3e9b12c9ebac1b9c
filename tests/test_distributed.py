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


@pytest.mark.heavy
def test_a_run_on_two_processes_resumes_in_one_and_gives_the_set_of_one(tmp_path, digits):
    args = ["dm", "--dataset", "digits", "--checkpoint-every", "1"]
    first = _distill(tmp_path / "split", *args, "--iterations", "2", ranks=2)
    second = _distill(tmp_path / "split", *args, "--iterations", "4", "--resume")
    for run in (first, second):
        assert run.returncode == 0, run.stderr
    assert first.stdout.count("wrote ") == 1  # rank 0 reports, once
    assert "resuming" in second.stderr + second.stdout
    one = ds.distill("dm", digits, iterations=4).images
    assert (one - _images(tmp_path / "split")).abs().max() < 1e-5  # 2 iterations on 2 ranks, 2 on one
    start = digits.train_x[digits.sample_per_class(10, torch.Generator().manual_seed(0))]
    assert (one - start).abs().max() > 1e-2  # the images did move from their real-image start


def test_a_method_without_data_parallel_support_is_refused_before_touching_out(tmp_path, monkeypatch, digits):
    from distilset.methods import runner

    (tmp_path / "synset.json").write_text("{}")  # an earlier run that --overwrite would delete
    monkeypatch.setattr(runner, "current", lambda: Shards(0, 2))
    with pytest.raises(ds.DistilsetError, match=r"`distill ls` does not run data-parallel \(2 processes\).*kip, mtt"):
        ds.distill("ls", digits, iterations=1, out=tmp_path, overwrite=True)
    assert (tmp_path / "synset.json").exists()


# DM, DC and DSA shard the classes, KIP and FRePo the target batch, MTT its trajectories: one torchrun launch distils
# each on 2 ranks (through the API, as a user's script would), the test process distils them in one; the sets
# must agree.
SHARDED = {
    "dm": {"ipc": 1},
    "dc": {"ipc": 1},
    "dsa": {"ipc": 1},
    "kip": {"ipc": 1, "target_batch": 100},
    "frepo": {"ipc": 1, "target_batch": 101, "pool": 2},  # an odd batch: the ranks' shares differ in size
    "mtt": {"ipc": 1, "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1, "trajectories": 2},
    "sre2l": {"ipc": 2, "batch_classes": 4},  # batches of 4 classes: each batch spans both ranks' classes
}
SCRIPT = """
import sys, distilset as ds
from distilset.distributed import init_from_env
init_from_env("cpu")
out, settings = sys.argv[1], eval(sys.argv[2])
data = ds.load_dataset("digits")
for method, (options, extra) in settings.items():
    ds.distill(method, data, iterations=3, out=f"{out}/{method}", **options, **extra)
"""


@pytest.mark.heavy
def test_every_data_parallel_method_on_two_processes_gives_the_set_of_one(tmp_path, digits, digits_teacher):
    experts = tmp_path / "experts"
    ds.train_experts(digits, experts, 2, ds.ExpertConfig(epochs=2))
    given = {"mtt": {"experts_dir": str(experts)}, "sre2l": {"teacher": str(digits_teacher)}}
    settings = {method: (options, given.get(method, {})) for method, options in SHARDED.items()}
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launcher, str(script), str(tmp_path / "two"), repr(settings)],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr
    for method, (options, extra) in settings.items():
        one = ds.distill(method, digits, iterations=3, **options, **extra)
        other = ds.SyntheticSet.load(tmp_path / "two" / method)
        start = digits.train_x[digits.sample_per_class(options["ipc"], torch.Generator().manual_seed(0))]
        assert (one.images - start).abs().max() > 1e-3, method  # the set did move
        assert (one.images - other.images).abs().max() < 1e-5, method
        assert (one.labels - other.labels).abs().max() < 1e-5, method
        assert one.recipe == other.recipe, method  # MTT: the same learned lr


def test_settings_that_leave_a_rank_idle_are_refused_before_touching_out(tmp_path, monkeypatch, digits):
    from distilset.methods import runner

    (tmp_path / "synset.json").write_text("{}")
    monkeypatch.setattr(runner, "current", lambda: Shards(0, 2))
    with pytest.raises(ds.ConfigError, match=r"over the 2 processes, but .?trajectories.? is 1; give --trajectories 2"):
        ds.distill("mtt", digits, iterations=1, out=tmp_path, overwrite=True)
    with pytest.raises(ds.ConfigError, match=r"under torchrun MTT reads trained experts"):
        ds.distill("mtt", digits, iterations=1, out=tmp_path, overwrite=True, trajectories=2)
    with pytest.raises(ds.ConfigError, match=r"target_batch.? 1 leaves some of the 2 processes no targets"):
        ds.distill("kip", digits, iterations=1, out=tmp_path, overwrite=True, target_batch=1)
    with pytest.raises(ds.ConfigError, match=r"under torchrun the processes read a trained teacher"):
        ds.distill("sre2l", digits, iterations=1, out=tmp_path, overwrite=True)
    assert (tmp_path / "synset.json").exists()


def test_a_target_batch_is_shared_out_whole():
    rows = [list(range(11))[Shards(r, 3).share(11)] for r in range(3)]
    assert rows == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]
