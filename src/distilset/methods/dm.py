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
An addition: ``precision`` can embed the real batches (no gradient, most of an iteration's arithmetic) in
bfloat16; the default stays float32, as the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from distilset.config import OLD_NAMES
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.methods.base import MethodConfig, PixelStatsOption
from distilset.methods.matching import PerClassImages
from distilset.methods.registry import Preset, register_method
from distilset.nets.options import NetOption
from distilset.runtime import autocast, resolve_precision


@dataclass(frozen=True)
class DMConfig(MethodConfig, NetOption, PixelStatsOption):
    """DM: distribution matching of mean embeddings under random networks (Zhao & Bilen 2023)."""

    ipc: int = 10
    """Synthetic images per class."""
    lr_img: float = 1.0
    """SGD learning rate on the images."""
    momentum: float = 0.5
    """Momentum of the image updates."""
    real_batch: int = field(default=256, metadata={OLD_NAMES: ("batch_real",)})
    """Real images per class per iteration (all of a smaller class)."""
    init: Literal["real", "noise"] = "real"
    """Start from random real images of each class, or from Gaussian noise."""
    dsa: bool = True
    """Augment real and synthetic batches with the same DSA transform (the dataset's strategy)."""
    precision: Literal["auto", "float32", "bfloat16"] = "float32"
    """Arithmetic of the real batches' embeddings, which no gradient flows through: bfloat16 autocast (their
    means are taken in float32), or auto (bfloat16 on a CPU that computes it natively). The synthetic images'
    embeddings, the loss and the update stay float32."""
    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "net": "The randomly initialised embedding network (its features before the classifier)."
    }
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "convnet"}
    ITERATIONS: ClassVar[int] = 1000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr_img", "pixel_stats", "precision")
    NONFINITE_HINT: ClassVar[str] = "lower `lr_img`, or resume to continue from the last good state"

    def check(self) -> None:
        self.require_positive("lr_img")
        self.require_at_least(0, "momentum")
        self.require_at_least(1, "ipc", "real_batch")

    def resolve(self, data: Dataset) -> tuple[DMConfig, dict[str, str]]:
        if len(data.image_shape) != 3:
            raise ConfigError(f"DM distils images (C, H, W); {data.info.name} has shape {data.image_shape}")
        if self.init == "real":
            data.require_per_class(self.ipc)
        cfg, notes = self.fill_net(data.image_shape, ("convnet", "DM's ConvNet"))
        cfg, more = cfg.fill_pixel_stats(data)
        return cfg, {**notes, **more}


class DistributionMatching(PerClassImages):
    """Stepwise DM (``methods.base.run`` drives it): ``step``, ``state_dict``, ``synthetic_set``."""

    method = "dm"

    def embedder(self) -> torch.nn.Module:
        """A freshly initialised network, frozen: it only embeds, nothing of it is learned."""
        return self.fresh_net().requires_grad_(False)

    def outer_step(self, iteration: int) -> dict[str, float]:
        net = self.embedder()
        precision = resolve_precision(self.cfg.precision, self.device)
        loss = torch.zeros((), device=self.device)
        for _, real, syn in self.my_class_batches():
            with torch.no_grad(), autocast(precision, self.device):
                mean_real = net.embed(real).float().mean(0)
            loss = loss + (mean_real - net.embed(syn).mean(0)).pow(2).sum()
        total = self.update_images(loss, "DM")
        return {"loss": total / self.data.num_classes}


register_method(
    "dm",
    DMConfig,
    DistributionMatching,
    presets={
        "dm-paper-ipc10": Preset("mnist", 20000, {"ipc": 10}, "the paper's budget: 20,000 iterations"),
        "dm-paper-ipc50": Preset("mnist", 20000, {"ipc": 50}, "the paper's budget: 20,000 iterations"),
    },
    data_parallel=True,
)
