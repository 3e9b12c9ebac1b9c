"""FRePo: Dataset Distillation using Neural Feature Regression (Zhou, Nezhadarya & Ba, NeurIPS 2022).

Read beside the paper's Algorithm 1 and its released ``frepo.py``:

1. The support set starts as class-balanced random real images with centred one-hot labels (learned too).
2. A pool of ``pool`` networks, their ages staggered (network i starts at age ``max_online_updates / pool * i``).
3. Each iteration picks a network of the pool at random and takes the features (the input of its classifier)
   of a random batch of real images (no gradient) and of the support images (with gradient). Kernel ridge
   regression with the feature kernel, K = F F^T, predicts the batch's labels from the support's
   (``kernels.krr``); the loss is their squared error to the batch's centred one-hot labels, plus FRePo's label
   margin term (the top-two margin of each learned label, capped at 1/K, rewarded). One LAMB step (cosine decay
   to 10 % over ``decay_iterations``) on the images and labels.
4. The chosen network then takes one Adam step (lr 3e-4) on the support set (MSE to the learned labels), or,
   past ``max_online_updates`` steps, is re-initialised.

The set's recipe is FRePo's evaluation: Adam lr 3e-4, MSE on the learned labels, 500 linear warm-up steps then a
cosine decay, the step count by set size (1000 steps for 10 images, 2000 for 100, ...), batch 500, the
ConvNet without normalisation it was distilled with.

Deviations, named: 1000 iterations by default (the paper trains far longer on accelerators) and, to match,
LAMB lr 3e-3 instead of 3e-4: LAMB moves each tensor by about lr times its norm per step, so 1000 steps at 3e-4
leave the images close to their real starting point (a trial on digits at 100 iterations: far smaller gains
over random real at 3e-4 than at 3e-3); the ConvNet's depth is fitted to the input; the online networks
train without augmentation (the released code augments them).
LAMB comes from the maintained ``pytorch-optimizer`` package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from distilset.config import FLAG
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.kernels import centred_one_hot, krr
from distilset.losses import centred_mse
from distilset.methods.base import Context, Distiller, MethodConfig, NonFiniteError
from distilset.methods.registry import register_method
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.recipes import Standard
from distilset.synset import SyntheticSet

EVAL_STEPS = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000, 2000: 40000, 5000: 40000}
"""Training steps of FRePo's evaluation by set size (the released evaluation script's table)."""


def eval_steps(n: int) -> int:
    """FRePo's evaluation steps for a set of ``n`` images (the nearest listed size)."""
    return EVAL_STEPS[min(EVAL_STEPS, key=lambda k: (abs(math.log(k / n)), k))]


def label_margin(labels: torch.Tensor) -> torch.Tensor:
    """FRePo's label term: minus the margin between the two largest entries of each label, capped at 1/K."""
    top = labels.topk(2, dim=1).values
    return -torch.clamp(top[:, 0] - top[:, 1], max=1.0 / labels.shape[1])


@dataclass(frozen=True)
class FRePoConfig(MethodConfig, NetOption):
    """FRePo: neural feature regression over a pool of online networks (Zhou et al. 2022)."""

    ipc: int = 10
    """Synthetic images per class."""
    lr: float = 3e-3
    """LAMB learning rate on the images and labels (the paper: 3e-4, over far more iterations)."""
    decay_iterations: int = 1000
    """Length of the cosine decay of the lr (to 10 %); later iterations keep the final lr."""
    learn_labels: bool = True
    """Learn the labels (they start as centred one-hot)."""
    target_batch: int = 1024
    """Real images per iteration."""
    pool: int = 10
    """Networks in the pool."""
    max_online_updates: int = 100
    """Steps a pool network takes on the support set before it is re-initialised."""
    online_lr: float = 3e-4
    """Adam learning rate of the pool networks."""
    reg: float = 1e-6
    """Ridge of the feature regression, relative to the mean diagonal of the support kernel."""
    net_kwargs: dict = field(default_factory=lambda: {"norm": "none"}, metadata={FLAG: "--net-arg"})
    """Network options as KEY=VALUE (FRePo's ConvNet has no normalisation; depth fitted to the input)."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "The pool's network (its features are the classifier's input)."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "convnet"}
    ITERATIONS: ClassVar[int] = 1000
    NONFINITE_HINT: ClassVar[str] = "lower `lr` or raise `reg`"

    def check(self) -> None:
        self.require_positive("lr", "online_lr")
        self.require_at_least(1, "ipc", "decay_iterations", "target_batch", "pool", "max_online_updates")
        if not 0 <= self.reg < float("inf"):
            raise ConfigError(f"`reg` must be a finite number >= 0, got {self.reg}")

    def check_ranks(self, world: int) -> None:
        if self.target_batch < world:
            raise ConfigError(
                f"`target_batch` {self.target_batch} leaves some of the {world} processes no targets; "
                f"give at least {world}"
            )

    def resolve(self, data: Dataset) -> tuple[FRePoConfig, dict[str, str]]:
        if len(data.image_shape) != 3:
            raise ConfigError(f"FRePo distils images (C, H, W); {data.info.name} has shape {data.image_shape}")
        data.require_per_class(self.ipc)
        return self.fill_net(data.image_shape, ("convnet", "FRePo's ConvNet"))


class FRePo(Distiller):
    """Stepwise FRePo (``methods.base.run`` drives it)."""

    def __init__(self, data: Dataset, cfg: FRePoConfig, ctx: Context | None = None):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        k = data.num_classes
        picks = data.sample_per_class(cfg.ipc, self.generator)
        self.images = data.train_x[picks].to(self.device).clone().requires_grad_(True)
        scale = math.sqrt(k / 10)  # the released code scales the centred labels by sqrt(K / 10)
        labels = centred_one_hot(torch.arange(k).repeat_interleave(cfg.ipc), k).float() / scale
        self.labels = labels.to(self.device).requires_grad_(cfg.learn_labels)
        learned = [self.images] + ([self.labels] if cfg.learn_labels else [])
        from pytorch_optimizer import Lamb  # loaded when FRePo runs, not on `import distilset`

        self.optimizer = Lamb(learned, lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._decay)
        self.nets, self.online, self.ages = [], [], []
        for i in range(cfg.pool):
            self._new_net(i, age=(cfg.max_online_updates // cfg.pool) * i)

    def _decay(self, iteration: int) -> float:
        progress = min(iteration / self.cfg.decay_iterations, 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def _new_net(self, i: int, age: int = 0) -> None:
        cfg = self.cfg
        net = create_net(
            cfg.net, self.data.image_shape, self.data.num_classes, seed=self.draw(2**62), **cfg.net_kwargs
        ).to(self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.online_lr)
        if i == len(self.nets):
            self.nets.append(net)
            self.online.append(optimizer)
            self.ages.append(age)
        else:
            self.nets[i], self.online[i], self.ages[i] = net, optimizer, age

    def outer_step(self, iteration: int) -> dict[str, float]:
        cfg, k = self.cfg, self.data.num_classes
        i = self.draw(cfg.pool)
        net = self.nets[i]
        pick = torch.randperm(len(self.data.train_x), generator=self.generator)[: cfg.target_batch]
        n = len(pick)
        pick = pick[self.shards.share(n)]  # data-parallel: this rank's share of the batch (all of it in one process)
        x_t = self.data.train_x[pick].to(self.device)
        y_t = centred_one_hot(self.data.train_y[pick], k).to(self.device) / math.sqrt(k / 10)
        net.eval()
        with torch.no_grad():
            f_t = net.embed(x_t).double()
        f_s = net.embed(self.images).double()
        try:
            pred = krr(f_s @ f_s.T, f_t @ f_s.T, self.labels.double(), reg=cfg.reg)
        except DistilsetError as e:
            raise NonFiniteError(f"FRePo's feature kernel broke down ({e})") from e
        kernel_loss = 0.5 * (pred - y_t).pow(2).sum() / n  # the mean over all n, once summed over the ranks
        loss = kernel_loss + (label_margin(self.labels).mean() if self.shards.writer else 0.0)  # counted once
        kernel_loss = self.descend(self.optimizer, loss, "FRePo's loss or support gradient", reported=kernel_loss)
        self.scheduler.step()
        self._online_update(i)
        right = self.shards.sum_((pred.argmax(1) == y_t.argmax(1)).sum().double())
        return {"loss": kernel_loss, "target_acc": right.item() / n}

    def _online_update(self, i: int) -> None:
        """The chosen network trains one step on the support set, or is re-initialised past its age limit."""
        if self.ages[i] > self.cfg.max_online_updates:
            self._new_net(i)
            return
        net, optimizer = self.nets[i], self.online[i]
        net.train()
        loss = centred_mse(net(self.images.detach()), self.labels.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.ages[i] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "nets": [net.state_dict() for net in self.nets],
            "online": [opt.state_dict() for opt in self.online],
            "ages": torch.tensor(self.ages),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for net, opt, net_state, opt_state in zip(self.nets, self.online, state["nets"], state["online"], strict=True):
            net.load_state_dict(net_state)
            opt.load_state_dict(opt_state)
        self.ages = [int(a) for a in state["ages"]]
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The images and learned labels with FRePo's evaluation recipe."""
        n = len(self.images)
        steps = eval_steps(n)
        recipe = Standard(
            optimizer="adam",
            lr=3e-4,
            weight_decay=0.0,
            batch_size=min(500, n),
            steps=steps,
            schedule="cosine",
            warmup=min(500, steps // 2),
            loss="mse",
        )
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.detach().cpu().float().clone(),
            method="frepo",
            recipe=recipe,
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
        )


register_method("frepo", FRePoConfig, FRePo, data_parallel=True)
