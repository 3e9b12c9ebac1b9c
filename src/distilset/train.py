"""The one training loop, ``fit``, and the replay of a learned recipe.

``fit(net, x, y, recipe)`` trains a network in place by a ``Standard`` recipe; it is used by the evaluation
harness, by MTT's expert trajectories (``on_epoch`` records the parameters after every epoch), by Dataset
Distillation's pretrained pools and by every other place that trains a network on data. ``replay`` applies a
Dataset Distillation recipe: its learned steps, in order, each with its learned lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from distilset.augment import dsa, toroidal_crop
from distilset.errors import DistilsetError
from distilset.losses import LOSSES, soft_cross_entropy
from distilset.progress import Progress
from distilset.recipes import Standard


def make_optimizer(params, recipe: Standard) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def fit(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Standard,
    seed: int = 0,
    progress: bool = False,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train ``net`` in place on (x, y) by ``recipe``; y hard (N,) or soft (N, K).

    Minibatches are drawn without replacement each epoch from a generator seeded by ``seed`` (DSA
    transforms and texture crops too), so the same seed gives the same network. With ``recipe.steps`` the
    training stops after that many minibatch steps; otherwise after ``recipe.total_epochs`` epochs.
    ``on_epoch(e, net)`` is called after each full epoch e = 1, 2, ...
    """
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(net.parameters(), recipe)
    loss_fn = LOSSES[recipe.loss]
    n = len(x)
    if n == 0:
        raise DistilsetError("there is nothing to train on (0 images)")
    batch = min(recipe.batch_size, n)
    per_epoch = -(-n // batch)
    total = recipe.steps if recipe.steps else recipe.total_epochs * per_epoch
    decay_at = total // 2 if recipe.schedule == "step" else None
    net.train()
    step, epoch = 0, 0
    bar = Progress(total, "train", progress, leave=False)
    while step < total:
        perm = torch.randperm(n, generator=g).to(x.device)
        for i in range(0, n, batch):
            if step == total:
                break
            if step == decay_at and step > 0:
                for group in opt.param_groups:
                    group["lr"] *= 0.1
            if recipe.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * cosine_factor(step, total, recipe.warmup)
            idx = perm[i : i + batch]
            xb = x[idx]
            if recipe.crop:
                xb = toroidal_crop(xb, recipe.crop, seed=int(torch.randint(2**62, (1,), generator=g)))
            if recipe.dsa:
                xb = dsa(xb, recipe.dsa, seed=int(torch.randint(2**62, (1,), generator=g)), siamese=False)
            loss = loss_fn(net(xb), y[idx])
            if not torch.isfinite(loss):
                _diverged(loss, y, epoch, opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(n=1)
        else:
            epoch += 1
            if on_epoch is not None:
                on_epoch(epoch, net)
    bar.close()
    return net


def cosine_factor(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """The lr multiplier at ``step`` of ``total``: linear from 0 over ``warmup`` steps, then a cosine decay from 1 to
    ``floor`` at the last step (optax's warm-up + ``cosine_decay_schedule`` with alpha ``floor``)."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _diverged(loss: torch.Tensor, y: torch.Tensor, epoch: int, lr: float) -> None:
    if y.ndim == 2 and bool((y < 0).any()):
        raise DistilsetError(
            f"training diverged at epoch {epoch}: the soft labels hold negative entries (min {float(y.min()):.3g}), "
            "so cross-entropy on them is unbounded below; train this set with its own recipe "
            "(`protocol` recipe) or clip its labels"
        )
    raise DistilsetError(
        f"training diverged (loss {loss.item()}) at epoch {epoch} with learning rate {lr:g}; train with a lower one"
    )


def replay(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, lrs: torch.Tensor, step_order: torch.Tensor
) -> nn.Module:
    """Dataset Distillation's recipe: step t is plain SGD on ``images[step_order[t]]`` with lr ``lrs[t]``."""
    params = [p for p in net.parameters() if p.requires_grad]
    device = params[0].device
    images, labels = images.to(device), labels.to(device)
    net.train()
    for t in range(len(lrs)):
        idx = step_order[t].to(device)
        loss = soft_cross_entropy(net(images[idx]), labels[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads, strict=True):
                p.sub_(lrs[t].to(device) * gr)
    return net


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y`` (eval mode, restored afterwards)."""
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    net.train(was_training)
    return correct / max(len(x), 1)
