"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Read beside the paper's Algorithm 1 and its released ``main_DM.py``:

1. Synthetic images start as random real images of each class (or Gaussian noise).
2. Each outer iteration draws a freshly initialised network and freezes it (no parameter receives a gradient;
   it only embeds). For every class c, a real batch of that class and the class's synthetic images are
   augmented with the same DSA transform (one shared seed: the siamese augmentation), embedded (the network's
   features before its classifier), and the loss adds the squared distance between the two mean embeddings.
3. One SGD step (lr 1.0, momentum 0.5) on the synthetic images.

The set is then trained like any other by DC's standard protocol (SGD 0.01, DSA, 1000 epochs).

Defaults: the released code's (lr 1.0, momentum 0.5, real batch 256 per class, real init, DSA, ConvNet-3);
``ipc`` 10. Deviations, named: the budget is 1000 iterations (the paper: 20,000), sized for a 2-core CPU
(``--iterations`` changes it); the ConvNet's depth is fitted to the input (depth 2 on 8x8 inputs, as in every
method here); a class smaller than the real batch contributes all its images. The released code draws the
DSA seed from the clock; here it comes from the run's generator, so a run is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch

from distilset.augment import dsa
from distilset.config import FLAG, auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.methods.base import Context, MethodConfig, NonFiniteError, restore_optimizer, rewind_on_nonfinite
from distilset.methods.registry import Preset, register_method
from distilset.nets import create_net, list_nets
from distilset.nets.registry import fit_net_to_input
from distilset.recipes import Standard
from distilset.synset import SyntheticSet


@dataclass(frozen=True)
class DMConfig(MethodConfig):
    """DM: distribution matching of mean embeddings under random networks (Zhao & Bilen 2023)."""

    ipc: int = 10
    """Synthetic images per class."""
    lr_img: float = 1.0
    """SGD learning rate on the images."""
    momentum: float = 0.5
    """Momentum of the image updates."""
    batch_real: int = 256
    """Real images per class per iteration (all of a smaller class)."""
    init: Literal["real", "noise"] = "real"
    """Start from random real images of each class, or from Gaussian noise."""
    dsa: bool = True
    """Augment real and synthetic batches with the same DSA transform (the dataset's strategy)."""
    net: str | None = auto("convnet", choices=list_nets)
    """The randomly initialised embedding network (its features before the classifier)."""
    net_kwargs: dict = field(default_factory=dict, metadata={FLAG: "--net-arg"})
    """Network options as KEY=VALUE (a ConvNet gets the depth its input allows unless given)."""

    ITERATIONS: ClassVar[int] = 1000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr_img",)
    NONFINITE_HINT: ClassVar[str] = "lower `lr_img`, or resume to continue from the last good state"

    def check(self) -> None:
        self.require_positive("lr_img")
        self.require_at_least(0, "momentum")
        self.require_at_least(1, "ipc", "batch_real")

    def resolve(self, data: Dataset) -> tuple[DMConfig, dict[str, str]]:
        if len(data.image_shape) != 3:
            raise ConfigError(f"DM distils images (C, H, W); {data.info.name} has shape {data.image_shape}")
        if self.init == "real":
            data.require_per_class(self.ipc)
        cfg, notes = self.fill(net=("convnet", "DM's ConvNet"))
        kwargs, why = fit_net_to_input(cfg.net, cfg.net_kwargs, data.image_shape)
        if why:
            cfg, notes = replace(cfg, net_kwargs=kwargs), {**notes, "net_kwargs": why}
        return cfg, notes


class DistributionMatching:
    """Stepwise DM (``methods.base.run`` drives it): ``step``, ``state_dict``, ``synthetic_set``."""

    def __init__(self, data: Dataset, cfg: DMConfig | None = None, ctx: Context | None = None):
        cfg, _ = (cfg or DMConfig()).resolve(data)
        ctx = ctx or Context()
        self.data, self.cfg, self.device = data, cfg, ctx.device
        self.generator = torch.Generator().manual_seed(ctx.seed)
        k = data.num_classes
        self.labels = torch.arange(k).repeat_interleave(cfg.ipc)
        if cfg.init == "noise":
            images = torch.randn(k * cfg.ipc, *data.image_shape, generator=self.generator)
        else:
            images = data.train_x[data.sample_per_class(cfg.ipc, self.generator)].clone()
        self.images = images.to(ctx.device).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.strategy = data.info.dsa_strategy if cfg.dsa else None

    def _draw(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def embedder(self) -> torch.nn.Module:
        """A freshly initialised network, frozen: it only embeds, nothing of it is learned."""
        net = create_net(self.cfg.net, self.data.image_shape, self.data.num_classes, seed=self._draw(2**62),
                         **self.cfg.net_kwargs).to(self.device)  # fmt: skip
        net.requires_grad_(False)
        return net

    def step(self, iteration: int) -> dict[str, float]:
        return rewind_on_nonfinite(self.generator, self._step)

    def _step(self) -> dict[str, float]:
        cfg, net = self.cfg, self.embedder()
        loss = torch.zeros((), device=self.device)
        for c in range(self.data.num_classes):
            real = self.data.class_batch(c, cfg.batch_real, self.generator).to(self.device)
            syn = self.images[c * cfg.ipc : (c + 1) * cfg.ipc]
            if self.strategy:
                seed = self._draw(2**62)  # one transform, the same for both batches (siamese)
                real, syn = dsa(real, self.strategy, seed=seed), dsa(syn, self.strategy, seed=seed)
            with torch.no_grad():
                mean_real = net.embed(real).mean(0)
            loss = loss + (mean_real - net.embed(syn).mean(0)).pow(2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not torch.isfinite(loss) or not torch.isfinite(self.images.grad).all():
            raise NonFiniteError(f"DM's loss or image gradient is not finite (loss {loss.item():.4g})")
        self.optimizer.step()
        return {"loss": loss.item() / self.data.num_classes}

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.detach().cpu(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
        restore_optimizer(self.optimizer, state["optimizer"], self.cfg.lr_img)
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The images with hard labels; the recipe is DC's standard protocol with the set's DSA."""
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.clone(),
            method="dm",
            recipe=Standard(dsa=self.strategy),
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
        )


def _build(data: Dataset, cfg: DMConfig, ctx: Context) -> DistributionMatching:
    return DistributionMatching(data, cfg, ctx)


register_method(
    "dm",
    DMConfig,
    _build,
    presets={
        "dm-paper-ipc10": Preset("mnist", 20000, {"ipc": 10}, "the paper's budget: 20,000 iterations"),
        "dm-paper-ipc50": Preset("mnist", 20000, {"ipc": 50}, "the paper's budget: 20,000 iterations"),
    },
)
