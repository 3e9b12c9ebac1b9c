"""Dataset Distillation (Wang, Zhu, Torralba, Efros 2018), Algorithm 1, with learned soft labels
(Sucholutsky & Schonlau 2021).

The distilled data are ``steps`` batches of ``classes x ipc`` images (or ``items`` images with soft labels),
visited ``epochs`` times: T = steps x epochs inner SGD steps, step t with its own learned lr softplus(raw_t).
Each outer iteration samples a real batch and one or more initial weights theta_0 (by the init regime),
unrolls the T steps with the graph kept, and takes Adam on the images, the raw lrs and (soft labels) the
label vectors to lower the cross-entropy of theta_T on the real batch.

Init regimes: ``fixed`` (one stored theta_0), ``random`` (fresh xavier-normal inits each iteration, ``n_nets``
averaged), ``fixed-pretrained`` / ``random-pretrained`` (one / a pool of nets pretrained on another dataset
or a subset of classes: domain adaptation). ``attack=(a, b)``: the poisoning objective, real labels of class
a read as b, so training on the distilled data makes the net call a's images b.

Deviations from the reference code, named: real batches are drawn without replacement per iteration (not by
walking epochs of a loader); "epochs" for the lr decay are counted as iterations x real_batch / train size.
Soft labels enter the inner loss unnormalised, sum_y label[y] * CE(out, y), as in the soft-label paper.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.evaluate import StandardProtocol, evaluate, train_standard
from distilset.methods.base import NonFiniteError
from distilset.nets import create_net
from distilset.synset import SyntheticSet
from distilset.unroll import default_segment, forward, net_params, unrolled_gradient

INIT_REGIMES = ("fixed", "random", "fixed-pretrained", "random-pretrained")


@dataclass(frozen=True)
class DDConfig:
    """Dataset Distillation settings; defaults are the paper's (MNIST, LeNet)."""

    steps: int = 10  # distilled batches
    epochs: int = 3  # passes over them: T = steps * epochs inner steps
    ipc: int = 1  # images per class per step
    items: int | None = None  # items per step instead of classes * ipc (soft labels: fewer items than classes)
    init: str = "fixed"  # one of INIT_REGIMES
    n_nets: int = 1  # inits per outer iteration, gradients averaged
    net: str = "lenet"
    net_kwargs: dict = field(default_factory=dict)
    init_scheme: str = "xavier"  # xavier-normal weights, zero biases
    lr: float = 0.01  # Adam on images, lrs and labels
    betas: tuple[float, float] = (0.5, 0.999)
    decay_epochs: float = 40  # StepLR period, in epochs over the real data
    decay_factor: float = 0.5
    init_lr: float = 0.02  # initial inner lr: raw = softplus^-1(init_lr)
    real_batch: int = 1024
    soft_labels: bool = False
    label_init: str = "onehot"  # or "random"
    attack: tuple[int, int] | None = None  # (attack_class, target_class)
    pool_size: int = 4  # pretrained nets in the pool (random-pretrained)
    pretrain_classes: tuple[int, ...] | None = None  # pretrain on these classes only (adaptation)
    pretrain_epochs: int = 5
    memory: str = "plain"  # or "checkpoint": sub-linear memory in T, same gradient
    segment: int | None = None  # checkpoint segment length (default ceil(sqrt(T)))
    outer_chunk: int = 256  # checkpoint mode: real images per outer-loss part (bounds their activations)

    @property
    def total_steps(self) -> int:
        return self.steps * self.epochs


def _validate(cfg: DDConfig, data: Dataset) -> None:
    if cfg.init not in INIT_REGIMES:
        raise DistilsetError(f"unknown init regime {cfg.init!r}; choose from {', '.join(INIT_REGIMES)}")
    if cfg.steps < 1 or cfg.epochs < 1 or cfg.ipc < 1:
        raise DistilsetError("steps, epochs and ipc must all be >= 1")
    for name in ("lr", "init_lr", "decay_factor", "decay_epochs"):
        if not getattr(cfg, name) > 0:
            raise DistilsetError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if cfg.real_batch < 1 or cfg.n_nets < 1 or cfg.pool_size < 1 or (cfg.items is not None and cfg.items < 1):
        raise DistilsetError("real_batch, n_nets, pool_size and items must all be >= 1")
    if cfg.items is not None and not cfg.soft_labels and cfg.items % data.num_classes:
        raise DistilsetError(f"--items {cfg.items} with hard labels must be a multiple of the {data.num_classes} "
                             "classes; add --soft-labels to learn labels for fewer items than classes")  # fmt: skip
    if cfg.memory not in ("plain", "checkpoint"):
        raise DistilsetError(f"memory must be 'plain' or 'checkpoint', got {cfg.memory!r}")
    if cfg.label_init not in ("onehot", "random"):
        raise DistilsetError(f"label_init must be 'onehot' or 'random', got {cfg.label_init!r}")
    if cfg.attack is not None:
        a, b = cfg.attack
        if not (0 <= a < data.num_classes and 0 <= b < data.num_classes) or a == b:
            raise DistilsetError(f"--attack {a}:{b} needs two different classes in [0, {data.num_classes})")


def pretrain_pool(
    data: Dataset, cfg: DDConfig, n: int, seed: int, classes: tuple[int, ...] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Train ``n`` nets (SGD, standard protocol) on ``data`` (optionally only ``classes``): a pretrained pool."""
    x, y = data.train_x, data.train_y
    if classes is not None:
        keep = torch.isin(y, torch.tensor(classes))
        x, y = x[keep], y[keep]
    proto = StandardProtocol(epochs=cfg.pretrain_epochs, lr=0.01, batch_size=256)
    pool = []
    for i in range(n):
        net = create_net(cfg.net, data.image_shape, data.num_classes, seed=seed + i, init=cfg.init_scheme,
                         **cfg.net_kwargs)  # fmt: skip
        train_standard(net, x, y, proto, seed=seed + i)
        pool.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return pool


class DatasetDistillation:
    """Algorithm 1 as a stepwise, checkpointable object (driven by ``methods.base.run``)."""

    def __init__(self, data: Dataset, cfg: DDConfig = DDConfig(), seed: int = 0,
                 pool: list[dict[str, torch.Tensor]] | None = None, device: str = "cpu"):  # fmt: skip
        _validate(cfg, data)
        self.data, self.cfg, self.seed, self.device = data, cfg, seed, device
        k = data.num_classes
        self.per_step = cfg.items if cfg.items is not None else k * cfg.ipc
        self.model = create_net(cfg.net, data.image_shape, k, seed=seed, init=cfg.init_scheme, **cfg.net_kwargs)
        self.model.to(device)
        self.generator = torch.Generator().manual_seed(seed)
        g = self.generator
        n_items = cfg.steps * self.per_step
        hard = torch.arange(self.per_step) % k if cfg.items is not None else torch.arange(k).repeat_interleave(cfg.ipc)
        self.hard_labels = hard.repeat(cfg.steps).to(device)
        self.images = torch.randn(n_items, *data.image_shape, generator=g).to(device).requires_grad_(True)
        raw = math.log(math.expm1(cfg.init_lr))  # softplus^-1
        self.raw_lrs = torch.full((cfg.total_steps,), raw, device=device).requires_grad_(True)
        self.labels: torch.Tensor | None = None
        if cfg.soft_labels:
            init = (F.one_hot(self.hard_labels, k).float() if cfg.label_init == "onehot"
                    else torch.softmax(torch.randn(n_items, k, generator=g), 1).to(device))  # fmt: skip
            self.labels = init.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.learnables(), lr=cfg.lr, betas=cfg.betas)
        # Initial weights by regime.
        self.fixed_init: dict[str, torch.Tensor] | None = None
        self.pool = pool
        if cfg.init == "fixed":
            self.fixed_init = {k_: v.to(device) for k_, v in net_params(self.model, False).items()}
        elif cfg.init.endswith("pretrained"):
            if self.pool is None:
                n = 1 if cfg.init == "fixed-pretrained" else cfg.pool_size
                self.pool = pretrain_pool(data, cfg, n, seed=seed + 10_000, classes=cfg.pretrain_classes)
            if cfg.init == "fixed-pretrained":
                self.fixed_init = {k_: v.to(device) for k_, v in self.pool[0].items()}

    # ---- learnable state ------------------------------------------------------------------------------
    def learnables(self) -> list[torch.Tensor]:
        return [self.images, self.raw_lrs] + ([self.labels] if self.labels is not None else [])

    def lrs(self) -> torch.Tensor:
        return F.softplus(self.raw_lrs)

    def step_targets(self) -> torch.Tensor:
        return self.labels if self.labels is not None else self.hard_labels

    def _step_fn(self, t: int):
        s = t % self.cfg.steps
        sl = slice(s * self.per_step, (s + 1) * self.per_step)
        return self.images[sl], self.step_targets()[sl], F.softplus(self.raw_lrs[t])

    def _inits(self) -> list[dict[str, torch.Tensor]]:
        cfg = self.cfg
        if self.fixed_init is not None:
            return [self.fixed_init] * (1 if cfg.init.startswith("fixed") else cfg.n_nets)
        if cfg.init == "random":
            seeds = torch.randint(2**62, (cfg.n_nets,), generator=self.generator).tolist()
            return [
                net_params(create_net(cfg.net, self.data.image_shape, self.data.num_classes, seed=s,
                                      init=cfg.init_scheme, **cfg.net_kwargs).to(self.device), False)
                for s in seeds
            ]  # fmt: skip
        picks = torch.randint(len(self.pool), (cfg.n_nets,), generator=self.generator).tolist()
        return [{k: v.to(self.device) for k, v in self.pool[i].items()} for i in picks]

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.data.train_x)
        idx = torch.randperm(n, generator=self.generator)[: self.cfg.real_batch]
        x, y = self.data.train_x[idx].to(self.device), self.data.train_y[idx].to(self.device)
        if self.cfg.attack is not None:
            a, b = self.cfg.attack
            y = torch.where(y == a, torch.full_like(y, b), y)
        return x, y

    def _outer_loss(self, params, x: torch.Tensor, y: torch.Tensor, chunked: bool):
        """Cross-entropy of theta_T on the real batch; in parts of ``outer_chunk`` images when chunked."""
        if not chunked:
            return F.cross_entropy(forward(self.model, params, x), y)
        n, size = len(x), self.cfg.outer_chunk
        return (
            F.cross_entropy(forward(self.model, params, x[i : i + size]), y[i : i + size], reduction="sum") / n
            for i in range(0, n, size)
        )

    def _outer_lr(self, iteration: int) -> float:
        epoch = iteration * self.cfg.real_batch / len(self.data.train_x)
        return self.cfg.lr * self.cfg.decay_factor ** math.floor(epoch / self.cfg.decay_epochs)

    # ---- one outer iteration ----------------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        x_real, y_real = self._real_batch()
        inits = self._inits()
        segment = None
        if cfg.memory == "checkpoint":
            segment = cfg.segment or default_segment(cfg.total_steps)
        total_loss, grads = 0.0, None
        for params0 in inits:
            loss, g = unrolled_gradient(
                self.model, params0, self._step_fn, cfg.total_steps,
                lambda p: self._outer_loss(p, x_real, y_real, chunked=segment is not None),
                self.learnables(), segment=segment,
            )  # fmt: skip
            total_loss += float(loss) / len(inits)
            g = [v / len(inits) for v in g] if len(inits) > 1 else g
            grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
        if not math.isfinite(total_loss):
            raise NonFiniteError(f"outer loss is {total_loss}")
        if not all(torch.isfinite(g).all() for g in grads):
            raise NonFiniteError("gradient of the distilled data is NaN/inf")
        snapshot = ([v.detach().clone() for v in self.learnables()], copy.deepcopy(self.optimizer.state_dict()))
        for group in self.optimizer.param_groups:
            group["lr"] = self._outer_lr(iteration)
        for v, g in zip(self.learnables(), grads, strict=True):
            v.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not all(torch.isfinite(v).all() for v in self.learnables()) or not torch.isfinite(self.lrs()).all():
            with torch.no_grad():
                for v, old in zip(self.learnables(), snapshot[0], strict=True):
                    v.copy_(old)
            self.optimizer.load_state_dict(snapshot[1])
            raise NonFiniteError("a distilled image, label or learned lr became NaN/inf")
        lrs = self.lrs().detach()
        return {"loss": total_loss, "lr_mean": float(lrs.mean()), "lr_min": float(lrs.min())}

    # ---- checkpointing ----------------------------------------------------------------------------------
    def _identity(self) -> str:
        """The settings a checkpoint must share to be resumed (the outer lr schedule may change)."""
        fields = {k: v for k, v in asdict(self.cfg).items() if k not in ("lr", "decay_epochs", "decay_factor")}
        return repr({**fields, "seed": self.seed})

    def state_dict(self) -> dict[str, Any]:
        state = {
            "images": self.images.detach().cpu(),
            "raw_lrs": self.raw_lrs.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "config": self._identity(),
        }
        if self.labels is not None:
            state["labels"] = self.labels.detach().cpu()
        if self.fixed_init is not None:
            state["fixed_init"] = {k: v.cpu() for k, v in self.fixed_init.items()}
        if self.pool is not None:
            state["pool"] = self.pool
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != self._identity():
            raise DistilsetError(
                "the checkpoint was made with other settings; resume with the same options (only --lr and the "
                "decay may change) or start a new --out directory"
            )
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.raw_lrs.copy_(state["raw_lrs"])
            if self.labels is not None:
                self.labels.copy_(state["labels"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "fixed_init" in state:
            self.fixed_init = {k: v.to(self.device) for k, v in state["fixed_init"].items()}
        if "pool" in state:
            self.pool = state["pool"]

    # ---- result -----------------------------------------------------------------------------------------
    def synthetic_set(self) -> SyntheticSet:
        cfg = self.cfg
        order = torch.stack([torch.arange(self.per_step) + (t % cfg.steps) * self.per_step
                             for t in range(cfg.total_steps)])  # fmt: skip
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=(self.labels.detach().cpu().clone() if self.labels is not None else self.hard_labels.cpu().clone()),
            method="dd",
            lrs=self.lrs().detach().cpu().clone(),
            step_order=order,
            init_params=({k: v.cpu().clone() for k, v in self.fixed_init.items()} if self.fixed_init else None),
            init_regime=cfg.init,
            net={"name": cfg.net, "kwargs": dict(cfg.net_kwargs), "init": cfg.init_scheme},
            config=config,
            extra={"seed": self.seed, "items_per_step": self.per_step},
        )

    def quick_eval(self, repeats: int = 2) -> dict[str, float]:
        """Recipe accuracy of the current set (fixed: its init; random: ``repeats`` fresh inits)."""
        syn = self.synthetic_set()
        pool = self.pool if self.cfg.init == "random-pretrained" else None
        reps = 1 if self.cfg.init.startswith("fixed") else repeats
        res = evaluate(syn, self.data, protocol="recipe", repeats=reps, seed=self.seed + 777, init_pool=pool,
                       device=self.device)  # fmt: skip
        return {"acc": res.accuracy_mean}


def with_overrides(cfg: DDConfig, **kw) -> DDConfig:
    """``cfg`` with the non-None keyword overrides applied (CLI helper)."""
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})
