"""SRe2L: recovery matches the teacher's batch-norm statistics, resumes bit for bit, and the set carries its
teacher and the teacher recipe."""

from __future__ import annotations

import pytest
import torch
from conftest import sigint_after
from torch import nn

import distilset as ds
from distilset.errors import ConfigError, Interrupted
from distilset.methods.base import Context
from distilset.methods.sre2l import SRe2L, SRe2LConfig
from distilset.teachers import load_teacher


def _batch_stats(net: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, nn.Module]]:
    """Per batch-norm layer: the mean and biased variance of its input over ``x`` (independently of SRe2L's code)."""
    stats = []
    hooks = [
        m.register_forward_pre_hook(
            lambda m, i: stats.append((i[0].mean((0, 2, 3)), i[0].var((0, 2, 3), unbiased=False), m))
        )
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return stats


@pytest.mark.heavy
@pytest.mark.parametrize("init", ["real", "noise"])
def test_recovery_lowers_the_statistics_loss_and_matches_the_running_statistics(digits_teacher, digits, init):
    teacher = load_teacher(digits_teacher)
    cfg = SRe2LConfig(ipc=10, batch_classes=10, init=init)
    run = SRe2L(digits, cfg, Context(seed=0, iterations=300), teacher=teacher)
    start = run.images.detach().clone()
    history = [run.step(i) for i in range(300)]
    first, last = history[0], history[-1]
    assert last["bn"] < 0.2 * first["bn"] and last["ce"] < first["ce"]
    syn = run.synthetic_set()

    def worst(images: torch.Tensor) -> list[float]:
        """Per layer, the largest relative gap of a batch's mean and variance to the running statistics."""
        gaps = []
        for j in range(cfg.ipc):  # each batch: one image per class, the same index j
            stats = _batch_stats(teacher.module, images[torch.arange(10) * cfg.ipc + j])
            gaps.append(
                [
                    max(
                        float((m - n.running_mean).norm() / n.running_mean.norm()),
                        float((v - n.running_var).norm() / n.running_var.norm()),
                    )
                    for m, v, n in stats
                ]
            )
        return torch.tensor(gaps).max(0).values.tolist()

    recovered, noise, before = worst(syn.images), worst(torch.randn_like(syn.images)), worst(start)
    assert recovered[0] < 0.5 * before[0], (recovered, before)  # recovery moved the statistics, not its start
    assert recovered[0] < 0.05 and max(recovered) < 0.35, recovered  # the first layer counts 10x (SRe2L)
    assert min(noise) > 0.3 and max(noise) > 0.5, noise  # noise misses them: the tolerances say something
    norm = digits.info.norm
    assert syn.images.min() >= (0 - norm.mean[0]) / norm.std[0] - 1e-6  # clipped to the valid pixel range
    assert syn.images.max() <= (1 - norm.mean[0]) / norm.std[0] + 1e-6
    assert (teacher.logits(syn.images).argmax(1) == syn.labels).float().mean() == 1.0


def test_a_run_stopped_by_a_signal_resumes_bit_for_bit_and_its_set_carries_the_teacher(
    tmp_path, digits_teacher, digits, monkeypatch
):
    args = {"ipc": 2, "teacher": str(digits_teacher), "iterations": 8}
    full = ds.distill("sre2l", digits, out=tmp_path / "full", **args)
    with sigint_after(monkeypatch, SRe2L, 3), pytest.raises(Interrupted, match="after iteration 4 of 8"):
        ds.distill("sre2l", digits, out=tmp_path / "cut", **args)
    resumed = ds.distill("sre2l", digits, out=tmp_path / "cut", resume=True, **args)
    assert torch.equal(full.images, resumed.images)
    with pytest.raises(ConfigError, match="planned for 8 iterations"):  # its cosine spans 8: no silent restart
        ds.distill("sre2l", digits, out=tmp_path / "cut", resume=True, **{**args, "iterations": 16})
    loaded = ds.SyntheticSet.load(tmp_path / "cut")
    assert loaded.method == "sre2l" and loaded.recipe.kind == "teacher" and loaded.teacher is not None
    assert loaded.net["name"] == "convnet-bn" and torch.equal(loaded.images, full.images)
    assert loaded.teacher.spec() == load_teacher(digits_teacher).spec()


def test_without_batch_norm_in_the_teacher_sre2l_refuses(tmp_path, digits):
    from distilset.teachers import train_teacher

    train_teacher(digits, tmp_path / "t", net="convnet", epochs=1, net_kwargs={"width": 8})
    with pytest.raises(ds.DistilsetError, match="has no batch-norm layer"):
        ds.distill("sre2l", digits, iterations=1, teacher=str(tmp_path / "t"))
