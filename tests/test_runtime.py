"""``distilset.runtime``: the allocator kept for reuse, the precision of training and testing, and the bfloat16
pooling backward; the precision reaching ``evaluate``, ``scores`` and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import distilset as ds
from distilset import ConfigError, Standard, create_net, runtime
from distilset.cli import main
from distilset.nets.layers import AvgPool2x2
from distilset.scores import full_accuracy
from distilset.train import accuracy, fit

FAULTS = """
import json, resource, sys, torch
from distilset.runtime import tune_allocator
tuned = tune_allocator()
x = torch.ones(64 << 18)  # 64 MiB: above glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    y = x.clone()
    del y
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DISTILSET_ALLOCATOR"}
    if env_value is not None:
        env["DISTILSET_ALLOCATOR"] = env_value
    done = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_tuned_allocator_reuses_large_blocks_instead_of_faulting_them_in_again():
    system, tuned = _faults("system"), _faults(None)
    pages = (64 << 20) // 4096
    assert not system["tuned"] and system["faults"] > 8 * pages  # each of the 10 clones faults its pages in again
    assert tuned["tuned"] and tuned["faults"] < 5 * pages  # the first clones only, until the heap has room


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_computes_it(monkeypatch):
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: True)
    assert runtime.resolve_precision("auto") == "bfloat16"
    assert runtime.resolve_precision("auto", "cuda") == "float32"
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: False)
    assert runtime.resolve_precision("auto") == "float32"
    assert runtime.resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ConfigError, match="precision must be one of auto, float32, bfloat16"):
        runtime.resolve_precision("half")


@pytest.mark.parametrize("side", [8, 6])
def test_the_pooling_gives_avgpool2d_values_and_gradients_in_bfloat16(side):
    x = torch.randn(3, 4, side, side, dtype=torch.bfloat16, requires_grad=True)
    mine, ref = AvgPool2x2()(x), torch.nn.AvgPool2d(2, 2)(x)
    assert torch.equal(mine, ref)
    (g_mine,) = torch.autograd.grad(mine.float().square().sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.float().square().sum(), x, create_graph=True)
    assert torch.equal(g_mine, g_ref)
    (gg_mine,) = torch.autograd.grad(g_mine.float().square().sum(), x)  # differentiable: MTT's unrolled steps
    (gg_ref,) = torch.autograd.grad(g_ref.float().square().sum(), x)
    assert torch.equal(gg_mine, gg_ref)
    with torch.no_grad():
        assert torch.equal(AvgPool2x2()(x), ref)
    odd = torch.randn(2, 3, 7, 7, dtype=torch.bfloat16, requires_grad=True)
    assert torch.equal(AvgPool2x2()(odd), torch.nn.AvgPool2d(2, 2)(odd))  # odd sides: ATen's own pooling


def test_bfloat16_training_learns_as_float32_does(digits):
    x, y = digits.train_x[:200], digits.train_y[:200]
    recipe = Standard(lr=0.03, epochs=60, batch_size=50)
    accs = {}
    for precision in ("float32", "bfloat16"):
        net = create_net("convnet", (1, 8, 8), 10, seed=0, width=16)
        before = accuracy(net, digits.test_x, digits.test_y, precision=precision)
        fit(net, x, y, recipe, seed=0, precision=precision)
        accs[precision] = accuracy(net, digits.test_x, digits.test_y, precision=precision)
        assert before < 0.3 and accs[precision] > 0.8
        assert all(p.dtype == torch.float32 for p in net.parameters())  # weights stay float32
    assert abs(accs["bfloat16"] - accs["float32"]) < 0.04


def test_accuracy_builds_no_graph_and_leaves_the_mode_as_it_was(digits):
    net = create_net("mlp", (1, 8, 8), 10, seed=0)
    net.train()
    x = digits.test_x[:50].clone().requires_grad_()
    accuracy(net, x, digits.test_y[:50])
    assert net.training and x.grad is None and all(p.grad is None for p in net.parameters())
    with pytest.raises(ConfigError, match="precision"):
        fit(net, digits.train_x[:10], digits.train_y[:10], Standard(steps=1), precision="fp16")


def test_evaluate_records_its_precision_and_a_replay_runs_in_float32(digits, monkeypatch):
    monkeypatch.setattr(runtime, "native_bfloat16", lambda: True)
    syn = ds.baseline("random", digits, ipc=2)
    r = ds.evaluate(syn, digits, protocol="standard", epochs=3, repeats=1)
    assert r.settings["precision"] == "bfloat16"
    r32 = ds.evaluate(syn, digits, protocol="standard", epochs=3, repeats=1, precision="float32")
    assert r32.settings["precision"] == "float32"
    with pytest.raises(ConfigError, match="precision"):
        ds.evaluate(syn, digits, repeats=1, precision="double")
    made = ds.distill("dd", digits, iterations=1, steps=2, epochs=1, progress=False)
    assert ds.evaluate(made, digits, repeats=1).settings["precision"] == "float32"


def test_the_full_data_cache_keeps_precisions_apart(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILSET_CACHE", str(tmp_path))
    recipe = Standard(steps=5, batch_size=64)
    a = full_accuracy(digits, "mlp", {}, recipe, precision="float32")
    b = full_accuracy(digits, "mlp", {}, recipe, precision="bfloat16")
    again = full_accuracy(digits, "mlp", {}, recipe, precision="bfloat16")
    assert not a["cached"] and not b["cached"] and again["cached"]
    cache = json.loads((tmp_path / "full-accuracy.json").read_text())
    assert len(cache) == 2 and sum("'bfloat16'" in row["made_by"] for row in cache.values()) == 1


def test_the_command_line_takes_a_precision_and_refuses_another(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(out), "--protocol", "standard", "--epochs", "2", "--repeats", "1", "--json"]
    assert main([*argv, "--precision", "float32"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["precision"] == "float32"
    assert main([*argv, "--precision", "half"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distilset: error:") and "invalid choice: 'half'" in err[0]
