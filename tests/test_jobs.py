"""Independent jobs on Ray (`--ray`): a local cluster gives the files and accuracies of the sequential path, and a
job whose worker dies is run again without losing or duplicating its file."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

import distilset as ds
from distilset import DistilsetError
from distilset.io import write_text
from distilset.jobs import run_jobs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one worker starts the module's local cluster and runs its tests


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})  # fmt: skip
    yield True
    ray.shutdown()


def _experts(data, out, ray_arg):
    torch.set_num_threads(1)  # as the Ray workers
    cfg = ds.ExpertConfig(net="convnet", net_kwargs={"width": 8}, epochs=2)
    return ds.train_experts(data, out, 3, cfg, seed=5, ray=ray_arg)


@pytest.mark.heavy
def test_experts_on_ray_match_the_sequential_run(digits, tmp_path, cluster):
    seq, par = _experts(digits, tmp_path / "seq", None), _experts(digits, tmp_path / "ray", cluster)
    assert par.ids == seq.ids == [0, 1, 2]
    for i in seq.ids:
        for e in range(3):
            assert torch.allclose(seq.flat(i, e), par.flat(i, e), atol=1e-5)
        assert seq.manifest["experts"][str(i)]["seed"] == par.manifest["experts"][str(i)]["seed"] == 5 + i
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "seq").iterdir())


@pytest.mark.heavy
def test_evaluation_sweep_on_ray_matches_the_sequential_run(digits, cluster):
    torch.set_num_threads(1)
    syn = ds.baseline("random", digits, ipc=5, seed=0)
    kw = {"repeats": 2, "epochs": 20, "seed": 3}
    seq = ds.evaluate_nets(syn, digits, ["mlp", "convnet"], **kw)
    par = ds.evaluate_nets(syn, digits, ["mlp", "convnet"], ray=cluster, **kw)
    assert [r.net for r in par] == [r.net for r in seq]
    for a, b in zip(seq, par, strict=True):
        assert a.runs == pytest.approx(b.runs, abs=1e-9)


@pytest.mark.heavy
def test_evaluation_repeats_on_ray_match_the_sequential_run(digits, cluster):
    torch.set_num_threads(1)
    syn = ds.baseline("random", digits, ipc=5, seed=0)
    seq = ds.evaluate(syn, digits, net="mlp", repeats=3, epochs=20, seed=4)
    par = ds.evaluate(syn, digits, net="mlp", repeats=3, epochs=20, seed=4, ray=cluster)
    assert par.seeds == seq.seeds == [4, 5, 6]
    assert par.runs == pytest.approx(seq.runs, abs=1e-9)
    assert len(set(seq.runs)) > 1  # three different networks, not one


@pytest.mark.heavy
def test_fedmd_parties_on_ray_match_the_sequential_run(digits, cluster):
    """3 parties on the 2-CPU cluster's 2 actors: one actor holds parties 0 and 2, so the crowd's dealing and
    reassembly of calls, results and state is exercised."""
    torch.set_num_threads(1)
    options = {"nets": ("mlp", "convnet:width=8,depth=1", "mlp:width=32"), "rounds": 2, "public_epochs": 1,
               "private_epochs": 3, "public_subset": 200}  # fmt: skip
    seq = ds.teach("fedmd", digits, **options)
    par = ds.teach("fedmd", digits, ray=cluster, **options)
    for key in ("public_test_accuracy", "pooled", "by_round", "revisit_only"):
        assert torch.allclose(torch.tensor(par.report[key]), torch.tensor(seq.report[key]), atol=1e-9), key
    assert seq.report["by_round"][2] != seq.report["by_round"][0]  # the rounds did train the parties
    for name, model in seq.models.items():
        other = par.models[name].module.state_dict()
        for k, v in model.module.state_dict().items():
            assert torch.allclose(v, other[k], atol=1e-6), (name, k)
    assert torch.equal(seq.labels["consensus"], par.labels["consensus"])


def test_a_crowd_refuses_a_call_with_the_wrong_number_of_argument_tuples():
    from distilset.jobs import Crowd

    with pytest.raises(ValueError, match="2 argument tuples for 3 members"):
        Crowd([1, 2, 3]).map("bit_length", [(), ()])


def test_ray_is_refused_by_a_system_that_does_not_use_it(digits):
    with pytest.raises(ds.ConfigError, match=r"teach omni does not run on Ray \(systems that do: fedmd\)"):
        ds.teach("omni", digits, ray=True)


def _flaky(marker: str, out: str, i: int) -> int:
    """Job i writes OUT/job_i.txt; job 1's first attempt kills its worker process before writing."""
    if i == 1 and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
    write_text(Path(out) / f"job_{i}.txt", f"{i}\n")
    return i * i


@pytest.mark.heavy
def test_a_killed_job_is_run_again_without_duplicates(tmp_path, cluster):
    marker = tmp_path / "killed-once"
    done = []
    results = run_jobs(_flaky, [(str(marker), str(tmp_path), i) for i in range(3)], ray=cluster,
                       on_done=lambda i, r: done.append(i))  # fmt: skip
    assert marker.exists()  # the first attempt of job 1 did die
    assert results == [0, 1, 4] and sorted(done) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job_0.txt", "job_1.txt", "job_2.txt", "killed-once"]


def test_without_ray_nothing_imports_it(digits, tmp_path):
    import subprocess

    code = ("import sys, distilset as ds; d = ds.load_dataset('digits'); "
            "ds.evaluate_nets(ds.baseline('random', d, ipc=2), d, ['mlp'], repeats=1, epochs=2); "
            "print('ray' in sys.modules, 'pytorch_optimizer' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"  # optional dependencies load where they are used (LAMB: FRePo)


@pytest.mark.heavy
def test_rded_scores_its_crop_shards_on_ray_as_the_process_does(digits, digits_teacher, cluster, monkeypatch):
    from distilset.methods import rded

    torch.set_num_threads(1)
    monkeypatch.setattr(rded, "SHARD", 16)  # several tasks per class
    args = {"ipc": 2, "candidates": 20, "crops": 2, "teacher": str(digits_teacher)}
    here = ds.distill("rded", digits, **args)
    on_ray = ds.distill("rded", digits, ray=cluster, **args)
    assert torch.equal(here.images, on_ray.images)
    assert here.extra["patches"] == on_ray.extra["patches"]


def test_an_unreachable_cluster_address_is_refused_at_once():
    """Ray would retry such an address for minutes, printing warnings; the probe refuses it in one line."""
    from distilset.jobs import _probe

    start = time.monotonic()
    with pytest.raises(DistilsetError, match="nothing answers at the Ray address 127.0.0.1:1"):
        _probe("127.0.0.1:1")
    assert time.monotonic() - start < 10
    with pytest.raises(DistilsetError, match="is not HOST:PORT"):
        _probe("no-port-here")
    _probe("auto")  # Ray's own lookup: not probed
