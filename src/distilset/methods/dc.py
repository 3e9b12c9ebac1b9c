"""DC: Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021), and DSA: the same with
Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Read beside DC's Algorithm 1 and the authors' released ``main.py`` (one file serves both papers):

1. Synthetic images start as Gaussian noise (or random real images of each class), ``ipc`` per class.
2. Each outer iteration draws a freshly initialised network. Then, ``outer_loop`` times:

   a. If the network has batch norm, its running statistics are set from a real batch (16 images per class)
      and frozen (batch-norm layers in eval mode) for the matching below.
   b. For every class c: the gradient of the cross-entropy of a real batch of class c (``batch_real`` images)
      with respect to the network's weights, and the same gradient for the class's synthetic images, kept in
      the graph. DSA augments both batches with one transform drawn from one seed (siamese). The loss adds the
      layer-wise distance of the two gradients (``layer_distance``).
   c. One SGD step (lr 0.1, momentum 0.5) on the synthetic images from the summed loss.
   d. Except after the last outer loop: the network trains ``inner_loop`` epochs on the current synthetic set
      (SGD lr 0.01, minibatches of 256; DSA augments each image on its own), so that the next matching happens
      at a point of the trajectory that training on the synthetic set reaches.

3. The set is then trained by DC's standard protocol (SGD 0.01, momentum 0.9, weight decay 5e-4, 300 epochs;
   DSA sets with their augmentation for 1000 epochs).

The (outer_loop, inner_loop) pairs are the released code's: (1, 1) at 1 image per class, (10, 50) at 10,
(20, 25), (30, 20), (40, 15), (50, 10) at 20 .. 50; other counts take the pair of the nearest listed one.

Defaults: the released code's, but ``ipc`` 1: at 10 images per class the loops above make one iteration cost
about 30 times as much (10 matchings and 450 inner epochs), hours on a laptop CPU. Other deviations, named:
the ConvNet's depth is fitted to the input (depth 2 on 8x8 inputs, as in every method here); 1-D parameters
(biases, norm scales) are left out of the gradients instead of being computed and matched with distance 0
(same loss, less work); the DSA seed comes from the run's generator, not the clock (reproducible, resumable);
DC's own evaluation augments MNIST images (crop, scale, rotate, noise), which DC sets here are trained without.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from distilset.config import OLD_NAMES, auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.methods.base import Context, MethodConfig, PixelStatsOption
from distilset.methods.matching import PerClassImages
from distilset.methods.registry import Preset, register_method
from distilset.nets.options import NetOption
from distilset.recipes import Standard
from distilset.train import fit

LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""(outer_loop, inner_loop) by images per class, from the released code."""
BN_IMAGES_PER_CLASS = 16
"""Real images per class that set the batch-norm statistics before they are frozen (the released code's)."""


def loops_for(ipc: int) -> tuple[int, int, int]:
    """The released code's (outer_loop, inner_loop) for ``ipc``, or the nearest listed ipc's; and that ipc."""
    nearest = min(LOOPS, key=lambda k: (abs(k - ipc), k))
    return (*LOOPS[nearest], nearest)


def layer_distance(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    """DC's distance between two gradients of one layer's weights: reshaped to (outputs, rest), the sum over
    output rows of 1 - cosine similarity (1e-6 in the denominator); 0 for 1-D parameters (biases, norms)."""
    if g_syn.ndim == 1:
        return g_syn.new_zeros(())
    a, b = g_syn.reshape(len(g_syn), -1), g_real.reshape(len(g_real), -1)
    return (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)).sum()


def match_loss(g_syn: list[torch.Tensor], g_real: list[torch.Tensor]) -> torch.Tensor:
    """The layer-wise distances summed over the network's parameters."""
    return sum((layer_distance(s, r) for s, r in zip(g_syn, g_real, strict=True)), g_syn[0].new_zeros(()))


@dataclass(frozen=True)
class DCConfig(MethodConfig, NetOption, PixelStatsOption):
    """DC: gradient matching on fresh networks along their training on the synthetic set (Zhao et al. 2021)."""

    ipc: int = 1
    """Synthetic images per class."""
    lr_img: float = 0.1
    """SGD learning rate on the images."""
    momentum: float = 0.5
    """Momentum of the image updates."""
    lr_net: float = 0.01
    """SGD learning rate of the network's training on the synthetic set between matchings."""
    real_batch: int = field(default=256, metadata={OLD_NAMES: ("batch_real",)})
    """Real images per class per matching (all of a smaller class)."""
    batch_train: int = 256
    """Minibatch of the network's training on the synthetic set."""
    init: Literal["noise", "real"] = "noise"
    """Start from Gaussian noise, or from random real images of each class."""
    outer_loop: int | None = auto("by ipc, the released code's: 1 at 1, 10 at 10, 50 at 50")
    """Matchings (image updates) per fresh network."""
    inner_loop: int | None = auto("by ipc, the released code's: 1 at 1, 50 at 10, 10 at 50")
    """Epochs the network trains on the synthetic set between two matchings."""
    dsa: bool = False
    """Augment real and synthetic batches with the same DSA transform (DSA); DC matches them unaugmented."""
    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "The network whose gradients are matched (fresh every iteration)."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "convnet"}
    ITERATIONS: ClassVar[int] = 1000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr_img", "pixel_stats")
    NONFINITE_HINT: ClassVar[str] = "lower `lr_img`, or resume to continue from the last good state"

    def check(self) -> None:
        self.require_positive("lr_img", "lr_net")
        self.require_at_least(0, "momentum")
        self.require_at_least(1, "ipc", "real_batch", "batch_train", "outer_loop", "inner_loop")

    def resolve(self, data: Dataset) -> tuple[DCConfig, dict[str, str]]:
        if len(data.image_shape) != 3:
            raise ConfigError(f"{self.name} distils images (C, H, W); {data.info.name} has shape {data.image_shape}")
        if self.init == "real":
            data.require_per_class(self.ipc)
        outer, inner, listed = loops_for(self.ipc)
        source = "the released code's" if listed == self.ipc else f"the released code's for ipc {listed}, the nearest"
        cfg, notes = self.fill_net(
            data.image_shape,
            ("convnet", f"{self.name}'s ConvNet"),
            outer_loop=(outer, f"{outer}: {source}"),
            inner_loop=(inner, f"{inner}: {source}"),
        )
        cfg, more = cfg.fill_pixel_stats(data)
        return cfg, {**notes, **more}

    @property
    def name(self) -> str:
        return "DSA" if self.dsa else "DC"


@dataclass(frozen=True)
class DSAConfig(DCConfig):
    """DSA: DC with differentiable siamese augmentation of both batches (Zhao & Bilen 2021)."""

    dsa: bool = True
    """Augment real and synthetic batches with the same DSA transform (the dataset's strategy); off gives DC."""


def freeze_batchnorm(net: nn.Module, real: torch.Tensor) -> None:
    """As the released code does before each matching: one forward pass of the real batch ``real`` in training
    mode (the running statistics move by the layers' momentum), then the batch-norm layers in eval mode, so the
    matching normalises real and synthetic images with the same statistics. No-op without batch norm."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    net.train()
    with torch.no_grad():
        net(real)
    for m in norms:
        m.eval()


class GradientMatching(PerClassImages):
    """Stepwise DC / DSA (``methods.base.run`` drives it): ``step``, ``state_dict``, ``synthetic_set``."""

    def __init__(self, data: Dataset, cfg: DCConfig, ctx: Context | None = None):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        self.method = "dsa" if cfg.dsa else "dc"
        self.inner = Standard(
            lr=cfg.lr_net,
            momentum=0.0,
            weight_decay=0.0,
            batch_size=cfg.batch_train,
            epochs=cfg.inner_loop,
            schedule="constant",
            dsa=self.strategy,
        )

    def network(self) -> nn.Module:
        """A freshly initialised network (PyTorch's default init, as in the released code)."""
        return self.fresh_net()

    def outer_step(self, iteration: int) -> dict[str, float]:
        cfg, net = self.cfg, self.network()
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        weights = [p for p in net.parameters() if p.ndim > 1]  # 1-D parameters have distance 0: not matched
        total = 0.0
        for outer in range(cfg.outer_loop):
            if has_batchnorm:
                k = self.data.num_classes
                bn = torch.cat([self.data.class_batch(c, BN_IMAGES_PER_CLASS, self.generator) for c in range(k)])
                freeze_batchnorm(net, bn.to(self.device))
            loss = self.matching_loss(net, weights)
            total += self.update_images(loss, cfg.name)
            if outer < cfg.outer_loop - 1:
                images = self.images.detach().clone()
                fit(net, images, self.labels.to(self.device), self.inner, seed=self.draw(2**62))
        return {"loss": total / (self.data.num_classes * cfg.outer_loop)}

    def matching_loss(self, net: nn.Module, weights: list[torch.Tensor]) -> torch.Tensor:
        """Sum over classes of the layer-wise distance between real and synthetic gradients (images in graph)."""
        loss = torch.zeros((), device=self.device)
        for c, real, syn in self.my_class_batches():
            target_real = torch.full((len(real),), c, device=self.device)
            g_real = torch.autograd.grad(nn.functional.cross_entropy(net(real), target_real), weights)
            target_syn = torch.full((len(syn),), c, device=self.device)
            g_syn = torch.autograd.grad(nn.functional.cross_entropy(net(syn), target_syn), weights, create_graph=True)
            loss = loss + match_loss(list(g_syn), [g.detach() for g in g_real])
        return loss


def _paper(ipc: int) -> Preset:
    return Preset("mnist", 1000, {"ipc": ipc}, f"the released code's settings at {ipc} image(s) per class")


register_method(
    "dc", DCConfig, GradientMatching, presets={f"dc-paper-ipc{n}": _paper(n) for n in (1, 10, 50)}, data_parallel=True
)
register_method(
    "dsa",
    DSAConfig,
    GradientMatching,
    presets={f"dsa-paper-ipc{n}": _paper(n) for n in (1, 10, 50)},
    data_parallel=True,
)
