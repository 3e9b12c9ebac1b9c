"""The one training loop, ``fit``, and the replay of a learned recipe.

``fit(net, x, y, recipe)`` trains a network in place by a ``Standard`` recipe, or by a ``Teacher`` recipe with
the teacher network given (``teacher=``: each minibatch an augmented view labelled by the teacher); it is used by
the evaluation harness, by MTT's expert trajectories (``on_epoch`` records the parameters after every epoch), by
Dataset Distillation's pretrained pools, by teacher training (``distilset.teachers``: resumable through
``on_state`` / ``resume``) and by every other place that trains a network on data. ``replay`` applies a Dataset
Distillation recipe: its learned steps, in order, each with its learned lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from distilset.augment import View, apply_view, draw_view, dsa, toroidal_crop
from distilset.errors import DistilsetError
from distilset.losses import LOSSES, kd_kl, soft_cross_entropy
from distilset.progress import Progress
from distilset.recipes import Standard, Teacher
from distilset.runtime import autocast, check_precision, tune_allocator

if TYPE_CHECKING:
    from distilset.relabel import StoredViews


def make_optimizer(params, recipe: Standard | Teacher) -> torch.optim.Optimizer:
    """The recipe's optimiser; AdamW decays only the weights of 2 or more dimensions (SRe2L's and RDED's
    ``get_parameters``: no decay on biases and normalisation scales)."""
    if recipe.optimizer == "adamw":
        params = list(params)
        groups = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def teacher_views(recipe: Teacher, n: int, size: tuple[int, int], g: torch.Generator) -> View:
    """The random choices of one minibatch view by the teacher recipe (``augment.draw_view`` with its settings)."""
    return draw_view(
        n, size, g, patches=recipe.patches, scale=recipe.crop_scale, flip=recipe.flip, cutmix=recipe.cutmix
    )


def teacher_view(x: torch.Tensor, recipe: Teacher, g: torch.Generator) -> torch.Tensor:
    """One augmented view of the minibatch ``x`` by the teacher recipe: patch shuffle, a random resized crop of
    each image, a flip per image, CutMix on the batch (see ``recipes.Teacher``)."""
    if x.ndim != 4:
        raise DistilsetError(f"the teacher recipe crops images (N, C, H, W); these inputs are {tuple(x.shape[1:])}")
    return apply_view(x, teacher_views(recipe, len(x), tuple(x.shape[2:]), g))


def fit(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Standard | Teacher,
    seed: int = 0,
    progress: bool | Progress = False,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    batches: BatchPlan | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    on_state: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    desc: str = "train",
    views: StoredViews | None = None,
    precision: str = "float32",
) -> nn.Module:
    """Train ``net`` in place on (x, y) by ``recipe``; y hard (N,) or soft (N, K).

    Minibatches are drawn without replacement each epoch from a generator seeded by ``seed`` (DSA
    transforms, texture crops and teacher views too), so the same seed gives the same network. With
    ``recipe.steps`` the training stops after that many minibatch steps; otherwise after ``recipe.total_epochs``
    epochs. ``on_epoch(e, net)`` is called after each full epoch e = 1, 2, ...
    ``batches`` replaces the plain shuffle with another plan (e.g. ``MixedBatches``: a fixed share of every
    minibatch from one part of x); ``loss_fn(outputs, targets)`` replaces the recipe's loss (e.g. FedMD's mean
    absolute error on class scores). A ``Teacher`` recipe needs ``teacher``, the network whose outputs on each
    view are the targets (``y`` is then unused).
    ``on_state(state)`` receives, after every epoch, what ``resume=state`` needs to continue the training exactly
    (the net's and optimiser's state, the generator, the step): a checkpoint, when the caller saves it.
    ``desc`` names the progress bar; ``progress`` may instead be a caller's ``Progress`` (evaluate's, over its
    nets), which then hears how far this training is (``Progress.within``) and no bar of its own is drawn.
    ``views`` (a teacher recipe's stored views, ``distilset.relabel``) replace the
    minibatch order, the views and the teacher's outputs with the stored ones: no teacher is run.
    ``precision`` (``distilset.runtime``): float32, bfloat16 (forward passes and the loss under autocast; weights,
    gradients and the optimiser in float32) or auto.
    """
    check_precision(precision)
    tune_allocator()
    if isinstance(recipe, Teacher) and teacher is None and views is None:
        raise DistilsetError("the teacher recipe trains against a teacher's outputs; give the teacher network")
    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(net.parameters(), recipe)
    custom_loss = loss_fn
    if loss_fn is None and not isinstance(recipe, Teacher):
        loss_fn = LOSSES[recipe.loss]
    n = len(x)
    if n == 0:
        raise DistilsetError("there is nothing to train on (0 images)")
    batches = batches or Shuffle(n, recipe.batch_size)
    per_epoch = batches.per_epoch
    total = recipe.steps if recipe.steps else recipe.total_epochs * per_epoch
    decay_at = total // 2 if recipe.schedule == "step" else None
    if teacher is not None:
        teacher.eval()
    net.train()
    step, epoch = 0, 0
    if resume is not None:
        net.load_state_dict(resume["net"])
        opt.load_state_dict(resume["optimizer"])
        g.set_state(resume["generator"])
        step, epoch = int(resume["step"]), int(resume["epoch"])
    outer = progress if isinstance(progress, Progress) else None
    bar = Progress(total, desc, outer is None and bool(progress), initial=step, leave=False)
    while step < total:
        for b, idx in enumerate(views.batches(epoch) if views is not None else batches.epoch(g)):
            if step == total:
                break
            if step == decay_at and step > 0:
                for group in opt.param_groups:
                    group["lr"] *= 0.1
            if recipe.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * cosine_factor(step, total, recipe.warmup)
            idx = idx.to(x.device)
            xb = x[idx]
            if getattr(recipe, "crop", None):
                xb = toroidal_crop(xb, recipe.crop, seed=int(torch.randint(2**62, (1,), generator=g)))
            if isinstance(recipe, Teacher) and views is not None:  # stored views and soft labels (FKD)
                with autocast(precision, x.device):
                    out = net(apply_view(xb, views.view(epoch, b)))
                loss = kd_kl(out.float(), views.targets(epoch, b, out.shape[1]).to(out.device), recipe.temperature)
            elif isinstance(recipe, Teacher):
                xb = teacher_view(xb, recipe, g)
                with torch.no_grad(), autocast(precision, x.device):
                    target = torch.softmax(teacher(xb).float() / recipe.temperature, 1)
                with autocast(precision, x.device):
                    out = net(xb)
                loss = kd_kl(out.float(), target, recipe.temperature)
            else:
                if recipe.dsa:
                    xb = dsa(xb, recipe.dsa, seed=int(torch.randint(2**62, (1,), generator=g)), siamese=False)
                with autocast(precision, x.device):
                    out = net(xb)
                loss = loss_fn(out.float(), y[idx])
            if not torch.isfinite(loss):
                _diverged(loss, None if custom_loss or teacher is not None else y, epoch, opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(n=1)
            if outer is not None:
                outer.within(step / total)
        else:
            epoch += 1
            if on_epoch is not None:
                on_epoch(epoch, net)
            if on_state is not None:
                on_state(
                    {
                        "net": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generator": g.get_state(),
                        "step": step,
                        "epoch": epoch,
                    }
                )
    bar.close()
    return net


class BatchPlan(Protocol):
    """How ``fit`` walks the data: ``per_epoch`` minibatches of indices per ``epoch(generator)``."""

    per_epoch: int

    def epoch(self, g: torch.Generator) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True)
class Shuffle:
    """The plain plan: every example once per epoch, in a fresh random order, in minibatches of ``batch_size``."""

    n: int
    batch_size: int

    @property
    def per_epoch(self) -> int:
        return -(-self.n // min(self.batch_size, self.n))

    def epoch(self, g: torch.Generator) -> Iterator[torch.Tensor]:
        return iter(torch.randperm(self.n, generator=g).split(min(self.batch_size, self.n)))


@dataclass(frozen=True)
class MixedBatches:
    """Every minibatch takes ``round(share * batch_size)`` examples from the first ``n_first`` indices and the rest
    from the other ``n_rest``, each part reshuffled whenever it runs out (omni-supervised data distillation mixes
    real and pseudo-labelled images about 6:4). An epoch is as many minibatches as one pass over both parts."""

    n_first: int
    n_rest: int
    batch_size: int
    share: float

    def __post_init__(self) -> None:
        if self.n_first < 1 or self.n_rest < 1 or self.batch_size < 2:
            raise DistilsetError(
                f"mixed minibatches need images in both parts and a batch of at least 2, got "
                f"{self.n_first} + {self.n_rest} images, batch {self.batch_size}"
            )

    @property
    def per_epoch(self) -> int:
        return -(-(self.n_first + self.n_rest) // self.batch_size)

    def epoch(self, g: torch.Generator) -> Iterator[torch.Tensor]:
        take_first = min(max(1, round(self.share * self.batch_size)), self.batch_size - 1)
        first = _Cycle(self.n_first, g, offset=0)
        rest = _Cycle(self.n_rest, g, offset=self.n_first)
        for _ in range(self.per_epoch):
            yield torch.cat([first.take(take_first), rest.take(self.batch_size - take_first)])


class _Cycle:
    """Indices offset .. offset+n-1 in random order, a fresh order each time they run out."""

    def __init__(self, n: int, g: torch.Generator, offset: int) -> None:
        self.n, self.g, self.offset, self.order = n, g, offset, torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k > 0:
            if not len(self.order):
                self.order = torch.randperm(self.n, generator=self.g) + self.offset
            parts.append(self.order[:k])
            k -= len(parts[-1])
            self.order = self.order[len(parts[-1]) :]
        return torch.cat(parts)


def cosine_factor(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """The lr multiplier at ``step`` of ``total``: linear from 0 over ``warmup`` steps, then a cosine decay from 1 to
    ``floor`` at the last step (optax's warm-up + ``cosine_decay_schedule`` with alpha ``floor``)."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _diverged(loss: torch.Tensor, y: torch.Tensor | None, epoch: int, lr: float) -> None:
    """Raise the divergence error; ``y``: the labels, when the loss is the recipe's (cross-entropy or MSE)."""
    if y is not None and y.ndim == 2 and bool((y < 0).any()):
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
def accuracy(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, precision: str = "float32"
) -> float:
    """Fraction of ``x`` classified as ``y`` (eval mode, restored afterwards; no autograd graph); ``precision`` as
    in ``fit``."""
    was_training = net.training
    net.eval()
    correct = 0
    with torch.inference_mode(), autocast(precision, x.device):
        for i in range(0, len(x), batch_size):
            correct += (net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    net.train(was_training)
    return correct / max(len(x), 1)
