"""Flexible Dataset Distillation: learn labels instead of images (Bohdal, Yang, Hospedales 2020).

The images are fixed real *base examples* (class-balanced from the target dataset, or random from another
source dataset); only their soft labels are learned. Two inner solvers:

- ``second-order``: per outer step a minibatch of base examples; ``inner_steps`` SGD steps with fast
  weights on soft cross-entropy (through ``distilset.unroll``); cross-entropy of the updated net on a real
  target batch; Adam on the labels, then clamp to [0, 1] and renormalise each row. The model itself keeps
  the fast weights (it trains on the base examples as it goes) and is re-initialised when the moving
  average of its target error stops falling.
- ``ridge`` (first order): the net's features of the base minibatch, a closed-form ridge regression onto the
  labels (dual form, ``ridge_lambda``), predictions on the target batch scaled by a learned calibration
  factor; the gradient reaches the labels through the closed form, and the same loss trains the feature
  extractor and the scale. The ridge weights are averaged over steps (global weights) to measure the
  target error that drives re-initialisation.

Unconfirmed details, our choices (REFERENCES.md gives no values): the plateau test (moving average over
``reset_window`` steps, re-initialise when it has not improved for ``reset_window`` steps), the initial
calibration scale (1) and the way global weights are used (error tracking only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.methods.base import NonFiniteError
from distilset.nets import create_net
from distilset.synset import SyntheticSet
from distilset.unroll import forward, net_params, sgd_step, unrolled_gradient

VARIANTS = ("second-order", "ridge")


@dataclass(frozen=True)
class LabelConfig:
    """Label distillation settings; defaults follow the paper where REFERENCES.md gives them."""

    base: int = 100  # number of base examples
    variant: str = "second-order"
    net: str = "lenet"
    net_kwargs: dict = field(default_factory=dict)
    inner_lr: float = 0.01
    inner_steps: int = 1
    base_batch: int = 50
    real_batch: int = 1024
    label_lr: float = 1e-3
    model_lr: float = 1e-3  # ridge: Adam on the feature extractor and the calibration scale
    ridge_lambda: float = 1.0
    reset_window: int = 100


def map_images(source: Dataset, x: torch.Tensor, target: Dataset) -> torch.Tensor:
    """Express ``source`` images in ``target``'s space: undo/redo normalisation, match channels and size."""
    c_s, c_t = source.train_x.shape[1], target.train_x.shape[1]
    pixels = x * torch.tensor(source.info.std).view(1, c_s, 1, 1) + torch.tensor(source.info.mean).view(1, c_s, 1, 1)
    if c_s != c_t:
        pixels = pixels.mean(1, keepdim=True).expand(-1, c_t, -1, -1) if c_t in (1, 3) else None
        if pixels is None:
            raise DistilsetError(f"cannot map {c_s}-channel base images to {c_t} channels")
    size = tuple(target.train_x.shape[2:])
    if tuple(pixels.shape[2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(target.info.mean).view(1, c_t, 1, 1)
    std = torch.tensor(target.info.std).view(1, c_t, 1, 1)
    return ((pixels - mean) / std).contiguous()


def select_base(target: Dataset, n: int, source: Dataset | None, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Base images (in the target's space) and, within a dataset, their classes (class-balanced picks)."""
    g = torch.Generator().manual_seed(seed)
    if source is None:
        k = target.num_classes
        if n % k:
            raise DistilsetError(f"--base {n} must be a multiple of the {k} classes for class-balanced base examples")
        per = n // k
        idx = []
        for c in range(k):
            members = target.class_indices(c)
            if per > len(members):
                raise DistilsetError(f"--base {n} needs {per} images of class {c}, which has {len(members)}")
            idx.append(members[torch.randperm(len(members), generator=g)[:per]])
        idx = torch.cat(idx)
        return target.train_x[idx].clone(), target.train_y[idx].clone()
    if n > len(source.train_x):
        raise DistilsetError(f"--base {n} is more than the {len(source.train_x)} images of {source.info.name}")
    idx = torch.randperm(len(source.train_x), generator=g)[:n]
    return map_images(source, source.train_x[idx], target), None


class LabelDistillation:
    """Learns soft labels for fixed base examples; stepwise and checkpointable (driven by ``methods.base.run``)."""

    def __init__(self, data: Dataset, cfg: LabelConfig = LabelConfig(), seed: int = 0,
                 source: Dataset | None = None, device: str = "cpu"):  # fmt: skip
        if cfg.variant not in VARIANTS:
            raise DistilsetError(f"unknown variant {cfg.variant!r}; choose from {', '.join(VARIANTS)}")
        for name in ("inner_lr", "label_lr", "model_lr", "ridge_lambda"):
            if not getattr(cfg, name) > 0:
                raise DistilsetError(f"{name} must be > 0, got {getattr(cfg, name)}")
        if min(cfg.base, cfg.base_batch, cfg.real_batch, cfg.inner_steps, cfg.reset_window) < 1:
            raise DistilsetError("base, base_batch, real_batch, inner_steps and reset_window must all be >= 1")
        self.data, self.cfg, self.seed, self.device, self.source = data, cfg, seed, device, source
        k = data.num_classes
        self.base_x, base_y = select_base(data, cfg.base, source, seed)
        self.base_x = self.base_x.to(device)
        self.base_classes = base_y
        init = F.one_hot(base_y, k).float() if base_y is not None else torch.full((cfg.base, k), 1.0 / k)
        self.labels = init.to(device).requires_grad_(True)
        self.label_opt = torch.optim.Adam([self.labels], lr=cfg.label_lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.resets = 0
        self._new_model()

    # ---- the model that is trained alongside ----------------------------------------------------------
    def _new_model(self) -> None:
        s = int(torch.randint(2**62, (1,), generator=self.generator))
        self.model = create_net(self.cfg.net, self.data.image_shape, self.data.num_classes, seed=s,
                                **self.cfg.net_kwargs).to(self.device)  # fmt: skip
        self.params = net_params(self.model)
        self.scale = torch.ones((), device=self.device, requires_grad=True)
        self.model_opt = torch.optim.Adam([*self.params.values(), self.scale], lr=self.cfg.model_lr)
        self.global_w: torch.Tensor | None = None
        self.global_count = 0
        self.errors: list[float] = []
        self.best_avg = math.inf
        self.since_best = 0

    def _track_error(self, error: float) -> None:
        """Moving average of the target error; re-initialise the model once it stops improving."""
        self.errors.append(error)
        window = self.cfg.reset_window
        if len(self.errors) < window:
            return
        avg = sum(self.errors[-window:]) / window
        if avg < self.best_avg - 1e-4:
            self.best_avg, self.since_best = avg, 0
        else:
            self.since_best += 1
        if self.since_best >= window:
            self.resets += 1
            self._new_model()

    def _batches(self):
        g = self.generator
        b = torch.randperm(len(self.base_x), generator=g)[: self.cfg.base_batch].to(self.device)
        t = torch.randperm(len(self.data.train_x), generator=g)[: self.cfg.real_batch]
        return b, self.data.train_x[t].to(self.device), self.data.train_y[t].to(self.device)

    # ---- one outer step ----------------------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, float]:
        b, x_t, y_t = self._batches()
        if self.cfg.variant == "second-order":
            loss, error = self._second_order(b, x_t, y_t)
        else:
            loss, error = self._ridge(b, x_t, y_t)
        self._track_error(error)
        return {"loss": loss, "target_error": error, "resets": float(self.resets)}

    def _finish_label_step(self, grad: torch.Tensor, loss: float) -> None:
        if not math.isfinite(loss) or not torch.isfinite(grad).all():
            raise NonFiniteError(f"target loss is {loss}")
        self.labels.grad = grad
        self.label_opt.step()
        self.label_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # keep every label a distribution
            self.labels.clamp_(0, 1)
            sums = self.labels.sum(1, keepdim=True)
            self.labels.copy_(torch.where(sums > 0, self.labels / sums.clamp_min(1e-12), 1.0 / self.labels.shape[1]))

    def _second_order(self, b, x_t, y_t) -> tuple[float, float]:
        cfg = self.cfg

        def step_fn(t: int):
            return self.base_x[b], self.labels[b], torch.tensor(cfg.inner_lr, device=self.device)

        def outer(p):
            return F.cross_entropy(forward(self.model, p, x_t), y_t)

        loss, (g,) = unrolled_gradient(self.model, self.params, step_fn, cfg.inner_steps, outer, [self.labels])
        self._finish_label_step(g, float(loss))
        # The model keeps its fast weights: it trains on the base examples with the (updated) labels.
        params = self.params
        for _ in range(cfg.inner_steps):
            params = sgd_step(self.model, params, self.base_x[b], self.labels[b].detach(),
                              torch.tensor(cfg.inner_lr), create_graph=False)  # fmt: skip
        self.params = params
        with torch.no_grad():
            error = float((forward(self.model, self.params, x_t).argmax(1) != y_t).float().mean())
        return float(loss.detach()), error

    def _ridge_weights(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """W = F^T (F F^T + lambda I)^-1 Y: ridge regression in its dual form (few base examples)."""
        gram = feats @ feats.T + self.cfg.ridge_lambda * torch.eye(len(feats), device=feats.device)
        return feats.T @ torch.linalg.solve(gram, targets)

    def _ridge(self, b, x_t, y_t) -> tuple[float, float]:
        f_b = _embed(self.model, self.params, self.base_x[b])
        f_t = _embed(self.model, self.params, x_t)
        w = self._ridge_weights(f_b, self.labels[b])
        loss = F.cross_entropy(self.scale * (f_t @ w), y_t)
        grads = torch.autograd.grad(loss, [self.labels, *self.params.values(), self.scale], allow_unused=True)
        g_labels = grads[0]
        self._finish_label_step(g_labels, float(loss.detach()))
        for p, g in zip([*self.params.values(), self.scale], grads[1:], strict=True):
            p.grad = None if g is None else g.detach()
        self.model_opt.step()
        self.model_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # global weights: the running mean of the ridge solutions
            w = w.detach()
            self.global_count += 1
            self.global_w = w if self.global_w is None else self.global_w + (w - self.global_w) / self.global_count
            pred = _embed(self.model, self.params, x_t) @ self.global_w
            error = float((pred.argmax(1) != y_t).float().mean())
        return float(loss.detach()), error

    # ---- checkpointing and result ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.detach().cpu(),
            "label_opt": self.label_opt.state_dict(),
            "generator": self.generator.get_state(),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "scale": self.scale.detach().cpu(),
            "model_opt": self.model_opt.state_dict(),
            "errors": torch.tensor(self.errors),
            "resets": self.resets,
            "best_avg": self.best_avg,
            "since_best": self.since_best,
            "global_w": self.global_w.detach().cpu() if self.global_w is not None else torch.zeros(0),
            "global_count": self.global_count,
            "config": repr(asdict(self.cfg)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != repr(asdict(self.cfg)):
            raise DistilsetError("the checkpoint was made with other settings; resume with the same options")
        with torch.no_grad():
            self.labels.copy_(state["labels"])
        self.label_opt.load_state_dict(state["label_opt"])
        self.generator.set_state(state["generator"])
        self.params = {k: v.to(self.device).requires_grad_(True) for k, v in state["params"].items()}
        self.scale = state["scale"].to(self.device).requires_grad_(True)
        self.model_opt = torch.optim.Adam([*self.params.values(), self.scale], lr=self.cfg.model_lr)
        self.model_opt.load_state_dict(state["model_opt"])
        self.errors = state["errors"].tolist()
        self.resets = int(state["resets"])
        self.best_avg, self.since_best = float(state["best_avg"]), int(state["since_best"])
        self.global_count = int(state["global_count"])
        self.global_w = state["global_w"].to(self.device) if self.global_count else None

    def synthetic_set(self) -> SyntheticSet:
        info = self.data.info
        config = {**asdict(self.cfg), "base_dataset": self.source.info.name if self.source else info.name}
        return SyntheticSet.for_dataset(
            self.data,
            images=self.base_x.detach().cpu().clone(),
            labels=self.labels.detach().cpu().clone(),
            method="labels",
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
            config=config,
            extra={"seed": self.seed, "resets": self.resets,
                   "base_classes": self.base_classes.tolist() if self.base_classes is not None else None},
        )  # fmt: skip


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
