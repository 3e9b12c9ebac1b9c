"""Flexible Dataset Distillation: learn labels instead of images (Bohdal, Yang, Hospedales 2020).

The images are fixed real *base examples* (class-balanced from the target dataset, or random from another
source dataset); only their soft labels are learned. Per outer step a minibatch of ``base_batch`` base
examples and one of ``real_batch`` target examples:

- ``second-order``: ``inner_steps`` SGD steps (``inner_lr``) of the model with fast weights on the soft
  cross-entropy of the base minibatch (through ``distilset.unroll``); cross-entropy of the fast-weight model
  on the target batch; Adam on the labels; clamp to [0, 1] and renormalise each row. The model itself then
  takes one Adam step (``model_lr``) on the base minibatch's soft cross-entropy.
- ``ridge`` (first order): ridge regression (dual form, ``ridge_lambda``, with a bias feature) from the
  net's base-minibatch features onto the labels gives local weights; the global weights move towards
  them, ``w <- (1 - global_rate) w + global_rate w_local``; target logits are ``scale * features @ w``
  with a learned calibration ``scale`` (Adam, ``scale_lr``). The labels get the gradient through the
  closed form; the feature extractor and the scale take an Adam step on the base minibatch's soft
  cross-entropy under the calibrated global weights.

Both variants track the target-batch error; when its moving average over ``reset_window`` steps has not
reached a new low for ``reset_window`` further steps, the model (and for ridge the global weights and the
scale) is re-initialised. The number of steps each model took to its lowest moving average is kept: the
mean of the last three is the paper's training length for fresh models (``SyntheticSet.extra['train_steps']``).
``reset_window`` defaults to the paper's 50 (200 above 100 base examples).

Start (a deviation from the paper's code, which starts every label uniform): within a dataset the labels start
one-hot on their base example's class (``label_init``). On mnist5k (100 base examples, ridge, LeNet), labels
learned from uniform beat one-hot labels on LeNet but lost to them on ConvNets (some base examples ended with
another class on top); learned from one-hot they kept a lead on the other nets too (README, label
distillation). ``--label-init uniform`` (preset ``labels-paper``) is the paper's start; cross-dataset base
examples always start uniform.

Model selection, as the paper's code: a class-balanced ``validation`` share of the training images is held
out; every ``val_every`` iterations (and at the end) a fresh model is trained on the current labels by the
paper's retraining (Adam, minibatches of ``base_batch``, ``train_steps`` steps) and scored on it; the set keeps
the labels (and training length) of the best check. Its recipe is that retraining.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.data.registry import load_dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.losses import soft_cross_entropy
from distilset.methods.base import Context, Distiller, MethodConfig, check_finite, restore_optimizer, start_labels
from distilset.methods.registry import Preset, register_method
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.nets.registry import classic_net_for
from distilset.recipes import Standard
from distilset.synset import SyntheticSet
from distilset.train import accuracy, fit
from distilset.unroll import forward, net_params, unrolled_gradient


@dataclass(frozen=True)
class LabelConfig(MethodConfig, NetOption):
    """Label distillation (Bohdal et al. 2020): learn soft labels for fixed real base examples."""

    base: int = 100
    """Number of base examples (class-balanced within the dataset)."""
    variant: Literal["second-order", "ridge"] | None = auto(
        "ridge for inputs of 20x20 and more, second-order below (measured at the default budget, see README)"
    )
    """Meta-gradient through one inner SGD step, or the first-order ridge-regression variant."""
    base_dataset: str | None = None
    """Take the base images from this other dataset (cross-dataset labels), e.g. fashion-mnist or npz:PATH."""
    label_init: Literal["onehot", "uniform", "random"] | None = auto(
        "onehot within a dataset (labels that transfer to other nets; the paper's code: uniform), uniform with "
        "base_dataset"
    )
    """Labels' start: one-hot of the base example's class, uniform (the paper's code), or random distributions."""
    inner_lr: float = 0.01
    """Second-order: lr of the inner SGD step with fast weights."""
    inner_steps: int = 1
    """Second-order: inner SGD steps."""
    base_batch: int | None = auto("the paper's: 10 up to 20 base examples, base/2 up to 50")
    """Base examples per outer step."""
    real_batch: int = 1024
    """Target (real) examples per outer step."""
    label_lr: float = 1e-3
    """Adam learning rate on the labels."""
    model_lr: float = 1e-3
    """Adam learning rate of the model trained alongside."""
    ridge_lambda: float = 1.0
    """Ridge: regularisation of the closed-form regression."""
    global_rate: float = 0.01
    """Ridge: the global weights move this far towards each step's local solution."""
    scale_lr: float = 0.01
    """Ridge: Adam learning rate of the calibration scale."""
    reset_window: int | None = auto("50, or 200 above 100 base examples (the paper)")
    """Steps of the moving average (and of patience) of the plateau rule that re-initialises the model."""
    validation: float = 1 / 6
    """Share of the training images held out to keep the labels that train the best fresh model (the paper:
    10,000 of MNIST's 60,000); 0 keeps the final labels."""
    val_every: int | None = auto("every 5 passes over the target data (the paper), at least every 100 iterations")
    """Iterations between validation checks."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "Network trained alongside the labels."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "lenet (>= 20x20 inputs), alexcifarnet (colour, >= 32x32), else mlp"}
    ITERATIONS: ClassVar[int] = 3000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("label_lr", "inner_lr")
    NONFINITE_HINT: ClassVar[str] = "lower `label_lr` (or `inner_lr`)"

    def check(self) -> None:
        self.require_positive("inner_lr", "label_lr", "model_lr", "ridge_lambda", "global_rate", "scale_lr")
        self.require_at_least(1, "base", "inner_steps", "base_batch", "real_batch", "reset_window", "val_every")
        if not 0 <= self.validation < 1:
            raise ConfigError(f"`validation` must lie in [0, 1), got {self.validation}")
        if self.label_init == "onehot" and self.base_dataset is not None:
            raise ConfigError("`label_init` onehot needs base examples of the target dataset (no `base_dataset`)")

    def resolve(self, data: Dataset) -> tuple[LabelConfig, dict[str, str]]:
        k = data.num_classes
        if data.token_embedding is not None:
            raise ConfigError(
                f"label distillation takes images or embedded vectors; {data.info.name} holds token ids "
                "(use rotten-tomatoes-sentences, or distill dd for token rows)"
            )
        if self.base_dataset is None and self.base % k:
            raise ConfigError(
                f"`base` {self.base} must be a multiple of the {k} classes for class-balanced base examples"
            )
        if self.base_dataset is None:
            per_class = torch.bincount(data.train_y, minlength=k).min().item() * (1 - self.validation)
            if self.base // k > per_class:
                raise ConfigError(
                    f"`base` {self.base} asks for {self.base // k} base images per class; the smallest "
                    f"class has {int(per_class)} outside the validation share: use `base` "
                    f"{k * int(per_class)} or less"
                )
        batch = min(50, max(10, self.base // 2), self.base)
        big = len(data.image_shape) == 3 and min(data.image_shape[1:]) >= 20
        return self.fill_net(
            data.image_shape,
            classic_net_for(data.image_shape),
            label_init=("uniform", "base examples from another dataset have no class to start from")
            if self.base_dataset is not None
            else (
                "onehot",
                "learned from one-hot, the labels beat one-hot labels on other nets too; from "
                "uniform (the paper's code) they lost on ConvNets (README)",
            ),
            variant=(
                "ridge",
                "at 3000 iterations it beat one-hot labels on mnist5k and Fashion-MNIST, second-order did not",
            )
            if big
            else ("second-order", "on 8x8 digits (an MLP) it beat ridge"),
            base_batch=(batch, f"the paper's for {self.base} base examples"),
            reset_window=(200 if self.base > 100 else 50, f"the paper's for {self.base} base examples"),
            val_every=(
                max(100, round(5 * len(data.train_x) * (1 - self.validation) / self.real_batch)),
                "5 passes over the target data (the paper), at least 100 iterations",
            ),
        )


def map_images(source: Dataset, x: torch.Tensor, target: Dataset) -> torch.Tensor:
    """Express ``source`` images in ``target``'s space: undo/redo normalisation, match channels and size."""
    c_t = target.train_x.shape[1]
    pixels = source.info.norm.denormalize(x)
    if pixels.shape[1] != c_t:
        if c_t not in (1, 3):
            raise DistilsetError(f"cannot map {pixels.shape[1]}-channel base images to {c_t} channels")
        pixels = pixels.mean(1, keepdim=True).expand(-1, c_t, -1, -1)
    size = tuple(target.train_x.shape[2:])
    if tuple(pixels.shape[2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return target.info.norm.normalize(pixels).contiguous()


def select_base(target: Dataset, n: int, source: Dataset | None, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base images (in the target's space) and, within a dataset, their classes (class-balanced picks)."""
    g = torch.Generator().manual_seed(seed)
    if source is None:
        idx = target.sample_per_class(n // target.num_classes, g, what="`base` / classes =")
        return target.train_x[idx].clone(), target.train_y[idx].clone()
    if n > len(source.train_x):
        raise ConfigError(f"`base` {n} is more than the {len(source.train_x)} images of {source.info.name}")
    idx = torch.randperm(len(source.train_x), generator=g)[:n]
    return map_images(source, source.train_x[idx], target), None


class LabelDistillation(Distiller):
    """Learns soft labels for fixed base examples; stepwise and checkpointable (``distilset.methods.runner``)."""

    def __init__(self, data: Dataset, cfg: LabelConfig, ctx: Context | None = None):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        seed, device = self.seed, self.device
        source = None
        if cfg.base_dataset is not None:
            source = load_dataset(cfg.base_dataset, root=self.ctx.data_root, download=self.ctx.download)
        self.source = source
        k = data.num_classes
        # The paper holds out part of the training data to pick the best labels; base and target batches
        # come from the rest. The test split is never seen.
        held_out = split_validation(data, cfg.validation, seed)
        self.target, self.val_x, self.val_y = held_out
        self.base_x, base_y = select_base(self.target, cfg.base, source, seed)
        self.base_x = self.base_x.to(device)
        self.base_classes = base_y
        self.generator = torch.Generator().manual_seed(seed + 1)  # the base and the split drew from their own
        hard = base_y if base_y is not None else torch.zeros(cfg.base, dtype=torch.long)  # (uniform across datasets)
        self.labels = start_labels(cfg.label_init, hard, k, self.generator).to(device).requires_grad_(True)
        self.label_opt = torch.optim.Adam([self.labels], lr=cfg.label_lr)
        self.resets = 0
        self.steps_to_best: list[int] = []  # per re-initialised model: steps to its lowest moving-average error
        self.checks = 0  # validation checks so far
        self.iterations = 0
        self.best: dict[str, Any] | None = None  # labels, training length, validation accuracy, iteration
        self._new_model()

    # ---- the model that is trained alongside ----------------------------------------------------------
    def _new_model(self) -> None:
        s = int(torch.randint(2**62, (1,), generator=self.generator))
        self.model = create_net(
            self.cfg.net, self.data.image_shape, self.data.num_classes, seed=s, **self.cfg.net_kwargs
        ).to(self.device)
        self.params = net_params(self.model)
        self.model_opt = torch.optim.Adam(list(self.params.values()), lr=self.cfg.model_lr)
        self.scale = torch.ones((), device=self.device, requires_grad=True)
        self.scale_opt = torch.optim.Adam([self.scale], lr=self.cfg.scale_lr)
        dim = self.model.feature_dim + 1  # + bias feature
        self.global_w = torch.zeros(dim, self.data.num_classes, device=self.device)
        self.errors: list[float] = []
        self.best_sum = math.inf
        self.since_best = 0

    def _track_error(self, error: float) -> None:
        """The paper's plateau rule: once ``window`` errors are in, re-initialise after ``window`` steps
        without a new lowest moving average; remember how many steps this model took to its lowest."""
        window = self.cfg.reset_window
        self.errors.append(error)
        if len(self.errors) < window:
            return
        ma = sum(self.errors[-window:])
        if len(self.errors) == window or ma < self.best_sum:
            self.best_sum, self.since_best = ma, 0
        elif self.since_best < window:
            self.since_best += 1
        else:
            self.steps_to_best.append(len(self.errors) - self.since_best - 1)
            self.resets += 1
            self._new_model()

    @property
    def train_steps(self) -> int:
        """The paper's training length for fresh models: mean steps-to-best of the last three models."""
        recent = self.steps_to_best[-3:] or [len(self.errors)]
        return max(1, round(sum(recent) / len(recent)))

    def _batches(self):
        g = self.generator
        b = torch.randperm(len(self.base_x), generator=g)[: self.cfg.base_batch].to(self.device)
        t = torch.randperm(len(self.target.train_x), generator=g)[: self.cfg.real_batch]
        return b, self.target.train_x[t].to(self.device), self.target.train_y[t].to(self.device)

    # ---- one outer step ----------------------------------------------------------------------------------
    def outer_step(self, iteration: int) -> dict[str, float]:
        b, x_t, y_t = self._batches()
        if self.cfg.variant == "second-order":
            loss, error = self._second_order(b, x_t, y_t)
        else:
            loss, error = self._ridge(b, x_t, y_t)
        self._track_error(error)
        metrics = {"loss": loss, "target_error": error, "resets": float(self.resets)}
        self.iterations = iteration + 1
        if self.val_x is not None and self.iterations % self.cfg.val_every == 0:
            metrics["val_acc"] = self._check()
        return metrics

    # ---- the paper's model selection --------------------------------------------------------------------
    def recipe(self, steps: int) -> Standard:
        """The paper's retraining of a fresh model: Adam (``model_lr``) on minibatches of ``base_batch``."""
        cfg = self.cfg
        return Standard(
            optimizer="adam",
            lr=cfg.model_lr,
            weight_decay=0.0,
            batch_size=cfg.base_batch,
            steps=steps,
            schedule="constant",
        )

    def _score_current(self) -> dict[str, Any]:
        """Train a fresh model on the current labels for the current training length and score it on the
        held-out images; a pure function of the iteration (its seed) and the state."""
        steps, cfg, it = self.train_steps, self.cfg, self.iterations
        net = create_net(
            cfg.net, self.data.image_shape, self.data.num_classes, seed=self.seed + 7919 * it, **cfg.net_kwargs
        ).to(self.device)
        labels = self.labels.detach().clone()
        fit(net, self.base_x, labels, self.recipe(steps), seed=self.seed + it)
        acc = accuracy(net, self.val_x.to(self.device), self.val_y.to(self.device))
        return {"labels": labels.cpu(), "train_steps": steps, "val_acc": acc, "iteration": it}

    def _check(self) -> float:
        """A validation check: keep the current labels if they train the best fresh model so far."""
        current = self._score_current()
        self.checks += 1
        if self.best is None or current["val_acc"] > self.best["val_acc"]:
            self.best = current
        return current["val_acc"]

    def _finish_label_step(self, grad: torch.Tensor, loss: float) -> None:
        check_finite("the target loss or the labels' gradient", loss, grad)
        self.labels.grad = grad
        self.label_opt.step()
        self.label_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # keep every label a distribution
            self.labels.clamp_(0, 1)
            sums = self.labels.sum(1, keepdim=True)
            self.labels.copy_(torch.where(sums > 0, self.labels / sums.clamp_min(1e-12), 1.0 / self.labels.shape[1]))

    def _model_step(self, loss: torch.Tensor, tensors: list[torch.Tensor], opts: list) -> None:
        """One Adam step of the model (and scale) on the base minibatch loss; labels held fixed."""
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for p, g in zip(tensors, grads, strict=True):
            p.grad = None if g is None else g.detach()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def _second_order(self, b, x_t, y_t) -> tuple[float, float]:
        cfg = self.cfg
        errors = []

        def step_fn(t: int):
            return self.base_x[b], self.labels[b], torch.tensor(cfg.inner_lr, device=self.device)

        def outer(p):
            logits = forward(self.model, p, x_t)
            errors.append(float((logits.argmax(1) != y_t).float().mean()))
            return F.cross_entropy(logits, y_t)

        loss, (g,) = unrolled_gradient(self.model, self.params, step_fn, cfg.inner_steps, outer, [self.labels])
        self._finish_label_step(g, float(loss))
        base_loss = soft_cross_entropy(forward(self.model, self.params, self.base_x[b]), self.labels[b].detach())
        self._model_step(base_loss, list(self.params.values()), [self.model_opt])
        return float(loss.detach()), errors[-1]

    def _ridge_weights(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """W = F^T (F F^T + lambda I)^-1 Y: ridge regression in its dual form (few base examples)."""
        gram = feats @ feats.T + self.cfg.ridge_lambda * torch.eye(len(feats), device=feats.device)
        return feats.T @ torch.linalg.solve(gram, targets)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = _embed(self.model, self.params, x)
        return torch.cat([f, torch.ones(len(f), 1, device=f.device)], 1)

    def _ridge(self, b, x_t, y_t) -> tuple[float, float]:
        cfg = self.cfg
        w_local = self._ridge_weights(self._features(self.base_x[b]), self.labels[b])
        w = (1 - cfg.global_rate) * self.global_w + cfg.global_rate * w_local
        logits = self.scale * (self._features(x_t) @ w)
        loss = F.cross_entropy(logits, y_t)
        (g_labels,) = torch.autograd.grad(loss, [self.labels])
        self._finish_label_step(g_labels, float(loss.detach()))
        self.global_w = w.detach()
        base_logits = self.scale * (self._features(self.base_x[b]) @ self.global_w)
        base_loss = soft_cross_entropy(base_logits, self.labels[b].detach())
        self._model_step(base_loss, [*self.params.values(), self.scale], [self.model_opt, self.scale_opt])
        error = float((logits.detach().argmax(1) != y_t).float().mean())
        return float(loss.detach()), error

    # ---- checkpointing and result ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.detach().cpu(),
            "label_opt": self.label_opt.state_dict(),
            "generator": self.generator.get_state(),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "model_opt": self.model_opt.state_dict(),
            "scale": self.scale.detach().cpu(),
            "scale_opt": self.scale_opt.state_dict(),
            "global_w": self.global_w.cpu(),
            "errors": torch.tensor(self.errors),
            "resets": self.resets,
            "steps_to_best": torch.tensor(self.steps_to_best, dtype=torch.long),
            "best_sum": self.best_sum,
            "since_best": self.since_best,
            "checks": self.checks,
            "iterations": self.iterations,
            "best": self.best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.labels.copy_(state["labels"])
        restore_optimizer(self.label_opt, state["label_opt"], self.cfg.label_lr)
        self.generator.set_state(state["generator"])
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in state["params"].items()}
        self.model_opt = torch.optim.Adam(list(self.params.values()), lr=self.cfg.model_lr)
        self.model_opt.load_state_dict(state["model_opt"])
        self.scale = state["scale"].to(self.device).requires_grad_(True)
        self.scale_opt = torch.optim.Adam([self.scale], lr=self.cfg.scale_lr)
        self.scale_opt.load_state_dict(state["scale_opt"])
        self.global_w = state["global_w"].to(self.device)
        self.errors = state["errors"].tolist()
        self.resets = int(state["resets"])
        self.steps_to_best = state["steps_to_best"].tolist()
        self.best_sum, self.since_best = float(state["best_sum"]), int(state["since_best"])
        self.checks, self.iterations, self.best = int(state["checks"]), int(state["iterations"]), state["best"]

    def synthetic_set(self) -> SyntheticSet:
        """The base images with the labels that trained the best fresh model on the held-out images (or the
        final labels without validation); the recipe is the paper's retraining for their training length."""
        info, cfg = self.data.info, self.cfg
        chosen = self.best
        if self.val_x is not None and self.iterations and self.iterations % cfg.val_every:
            final = self._score_current()  # the final labels take part too (without changing any state)
            if chosen is None or final["val_acc"] > chosen["val_acc"]:
                chosen = final
        chosen = (
            chosen if chosen is not None else {"labels": self.labels.detach().cpu(), "train_steps": self.train_steps}
        )
        return SyntheticSet.for_dataset(
            self.data,
            images=self.base_x.detach().cpu().clone(),
            labels=chosen["labels"].clone(),
            method="labels",
            recipe=self.recipe(chosen["train_steps"]),
            net={"name": cfg.net, "kwargs": dict(cfg.net_kwargs), "init": "default"},
            extra={
                "resets": self.resets,
                "train_steps": chosen["train_steps"],
                "val_acc": chosen.get("val_acc"),
                "chosen_iteration": chosen.get("iteration"),
                "base_dataset": self.source.info.name if self.source else info.name,
                "base_classes": self.base_classes.tolist() if self.base_classes is not None else None,
            },
        )


def split_validation(
    data: Dataset, share: float, seed: int
) -> tuple[Dataset, torch.Tensor | None, torch.Tensor | None]:
    """``data`` without a class-balanced ``share`` of its training images, and those images with their labels."""
    if share == 0:
        return data, None, None
    held, keep = data.holdout(share, torch.Generator().manual_seed(seed + 2))
    target = dataclasses.replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])
    return target, data.train_x[held], data.train_y[held]


class _EmbedOf(torch.nn.Module):
    """Calls ``inner.embed`` as its forward, so ``functional_call`` can compute features with explicit params."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(x)


def _embed(model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Features before the classifier (every net here has ``embed``), computed with ``params``."""
    return torch.func.functional_call(_EmbedOf(model), {f"inner.{k}": v for k, v in params.items()}, (x,), strict=False)


register_method(
    "labels",
    LabelConfig,
    LabelDistillation,
    presets={
        "labels-paper": Preset(
            "mnist",
            3000,
            {"base": 100, "label_init": "uniform"},
            "the paper's start (uniform labels) and 100 base examples; its code's plateau, validation and retraining",
        )
    },
)
