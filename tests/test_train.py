"""``train.fit``, the one training loop: budgets by steps or epochs, schedules, determinism, exact resume,
minibatch plans, divergence, and the progress it reports to a caller."""

from __future__ import annotations

import copy

import pytest
import torch

from distilset import DistilsetError, Standard, create_net
from distilset.progress import Progress
from distilset.train import MixedBatches, accuracy, fit


def mlp(seed: int = 0) -> torch.nn.Module:
    return create_net("mlp", (1, 8, 8), 10, seed=seed)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_training_learns(digits):
    x, y = digits.train_x[:300], digits.train_y[:300]
    net = mlp()
    before = accuracy(net, x, y)
    fit(net, x, y, Standard(optimizer="adam", lr=1e-3, steps=200, batch_size=50))
    assert before < 0.3 and accuracy(net, x, y) > 0.9
    assert accuracy(net, digits.test_x, digits.test_y) > 0.75


def test_budget_by_steps_and_epochs(digits):
    x, y = digits.train_x[:100], digits.train_y[:100]
    seen = []
    fit(mlp(), x, y, Standard(batch_size=30, epochs=3), on_epoch=lambda e, net: seen.append(e))
    assert seen == [1, 2, 3]  # four minibatches an epoch, a callback after each full epoch
    seen.clear()
    fit(mlp(), x, y, Standard(batch_size=30, steps=9), on_epoch=lambda e, net: seen.append(e))
    assert seen == [1, 2]  # 9 steps: two full epochs and one minibatch of the third


def test_same_seed_same_net_other_seed_other_net(digits):
    x, y = digits.train_x[:100], digits.train_y[:100]
    recipe = Standard(batch_size=30, steps=9)
    assert same(fit(mlp(), x, y, recipe, seed=4), fit(mlp(), x, y, recipe, seed=4))
    assert not same(fit(mlp(), x, y, recipe, seed=4), fit(mlp(), x, y, recipe, seed=5))


def test_step_schedule_drops_the_lr_tenfold_halfway(digits, monkeypatch):
    x, y = digits.train_x[:64], digits.train_y[:64]
    lrs = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    fit(mlp(), x, y, Standard(lr=0.1, batch_size=32, steps=10, schedule="step"))
    assert lrs[:5] == [0.1] * 5 and lrs[5:] == pytest.approx([0.01] * 5)
    lrs.clear()
    fit(mlp(), x, y, Standard(lr=0.1, batch_size=32, steps=10, schedule="cosine"))
    assert lrs[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] < 0.01


def test_resume_from_the_state_after_an_epoch_is_exact(digits):
    x, y = digits.train_x[:90], digits.train_y[:90]
    recipe = Standard(optimizer="adam", lr=1e-3, batch_size=30, epochs=4)
    states = []
    whole = fit(mlp(), x, y, recipe, seed=3, on_state=lambda s: states.append(copy.deepcopy(s)))
    second = mlp(seed=9)  # other weights: the state replaces them
    resumed = fit(second, x, y, recipe, seed=3, resume=states[1])  # from the end of epoch 2
    assert states[1]["epoch"] == 2 and states[1]["step"] == 6
    assert same(whole, resumed)


def test_mixed_batches_take_a_fixed_share_from_the_first_part(digits):
    plan = MixedBatches(n_first=20, n_rest=80, batch_size=10, share=0.6)
    batches = list(plan.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == plan.per_epoch == 10
    assert all(int((b < 20).sum()) == 6 for b in batches)
    with pytest.raises(DistilsetError, match="mixed minibatches need"):
        MixedBatches(n_first=0, n_rest=5, batch_size=4, share=0.5)


def test_divergence_and_empty_input_are_errors(digits):
    x, y = digits.train_x[:60], digits.train_y[:60]
    with pytest.raises(DistilsetError, match="training diverged .* learning rate 1e\\+08"):
        fit(mlp(), x, y, Standard(lr=1e8, batch_size=30, epochs=20))
    with pytest.raises(DistilsetError, match="nothing to train on"):
        fit(mlp(), x[:0], y[:0], Standard(epochs=1))


def test_a_callers_progress_hears_how_far_the_training_is(digits):
    heard = []

    class Outer(Progress):
        def within(self, fraction, values=None):
            heard.append(fraction)

    x, y = digits.train_x[:60], digits.train_y[:60]
    fit(mlp(), x, y, Standard(batch_size=30, steps=8), progress=Outer(3, "outer", enabled=False))
    assert heard == pytest.approx([i / 8 for i in range(1, 9)])
