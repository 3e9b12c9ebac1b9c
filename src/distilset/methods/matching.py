"""What the matching methods DC, DSA (``dc.py``) and DM (``dm.py``) share: ``ipc`` synthetic images per class,
from noise or random real images, learned by SGD with momentum; a freshly initialised network every iteration;
per-class real batches that share one DSA transform with the class's synthetic images (siamese augmentation);
the checkpoint state; and the saved set (hard labels, DC's standard protocol with the set's DSA strategy).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distilset.augment import dsa
from distilset.data.dataset import Dataset
from distilset.methods.base import Context, Distiller, restore_optimizer
from distilset.nets import create_net
from distilset.recipes import Standard
from distilset.synset import SyntheticSet


class PerClassImages(Distiller):
    """The shared state of a matching method; a subclass adds ``outer_step`` (one outer iteration) and a name."""

    method = ""
    """The name the saved set records."""

    def __init__(self, data: Dataset, cfg: Any, ctx: Context | None = None):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        k = data.num_classes
        self.labels = torch.arange(k).repeat_interleave(cfg.ipc)
        if cfg.init == "noise":
            images = torch.randn(k * cfg.ipc, *data.image_shape, generator=self.generator)
        else:
            images = data.train_x[data.sample_per_class(cfg.ipc, self.generator)].clone()
        self.images = images.to(self.device).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.strategy = data.info.dsa_strategy if cfg.dsa else None

    def fresh_net(self) -> nn.Module:
        """A freshly initialised network (PyTorch's default init, as in the released code)."""
        return create_net(
            self.cfg.net, self.data.image_shape, self.data.num_classes, seed=self.draw(2**62), **self.cfg.net_kwargs
        ).to(self.device)

    def class_batches(self, c: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A real batch of class ``c`` and the class's synthetic images, both augmented by one DSA transform drawn
        from one seed (siamese) when the method augments; None when another rank computes class ``c`` (its
        random numbers are drawn all the same, so every rank's generator stays in step)."""
        real = self.data.class_batch(c, self.cfg.real_batch, self.generator)
        syn = self.images[c * self.cfg.ipc : (c + 1) * self.cfg.ipc]
        seed = self.draw(2**62) if self.strategy else None
        if not self.shards.mine(c):
            return None
        real = real.to(self.device)
        if seed is not None:
            real, syn = dsa(real, self.strategy, seed=seed), dsa(syn, self.strategy, seed=seed)
        return real, syn

    def my_class_batches(self):
        """(c, real, syn) for each class this rank computes (``class_batches``), in class order; every class's
        random numbers are drawn all the same."""
        for c in range(self.data.num_classes):
            batches = self.class_batches(c)
            if batches is not None:
                yield c, *batches

    def update_images(self, loss: torch.Tensor, name: str) -> float:
        """One SGD step on the images from ``loss`` (summed over the ranks), refused before any change if it is not
        finite; returns the loss summed over the ranks."""
        return self.descend(self.optimizer, loss, f"{name}'s loss or image gradient")

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
        restore_optimizer(self.optimizer, state["optimizer"], self.cfg.lr_img)
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The images with hard labels; the recipe is DC's standard protocol with the set's DSA strategy."""
        syn = SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.clone(),
            method=self.method,
            recipe=Standard(dsa=self.strategy),
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
        )
        return self.cfg.finish_set(syn, self.data)
