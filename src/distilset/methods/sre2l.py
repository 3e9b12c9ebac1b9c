"""SRe2L: Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023).

Read beside the paper's Section 3 and its released ``recover/data_synthesis.py`` and ``small_dataset`` scripts:

1. Squeeze: a teacher is trained once on all the training images (``distilset teacher``; the ``prepare`` hook
   trains one into OUT/teacher, or reads ``--teacher DIR``). It must have batch-norm layers.
2. Recover: synthetic images start as Gaussian noise in the paper (in the normalised input space; ``--init noise``),
   here by default as random real images of their class (see below). Each iteration, every image
   is jittered (a roll by a few pixels; on inputs of 64 px or more first a random resized crop of area 0.08-1
   and a flip where the dataset allows one, as on ImageNet; one draw per batch, as the released code transforms
   a batch tensor), the teacher runs on it in eval mode, and the loss is

       CE(teacher(x), y) + r_bn * sum_l m_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2)

   where mu_l(x), var_l(x) are the per-channel mean and (biased) variance of the input of batch-norm layer l
   over the batch, mu_l, var_l its running statistics, and m_l is ``first_bn_multiplier`` for the first layer
   and 1 for the others (plain L2 norms, not squared). A batch is one image per class of up to
   ``batch_classes`` classes (SRe2L: 100 classes per batch, one batch per image index). One Adam step
   (lr 0.25, betas 0.5 / 0.9) with a cosine decay over the run, then every pixel is clipped to the valid range.
3. Relabel: the set carries the teacher and the teacher recipe (``recipes.Teacher``): students train on the
   teacher's soft labels of augmented views (FKD-style, computed per batch instead of stored).

Defaults are the released code's CIFAR settings (lr 0.25, r_bn 0.01, first-layer multiplier 10, 1000 iterations,
roll-only jitter below 64 px); ``ipc`` 10. Deviations, named: the images start from random real images of their
class, the real-image initialisation of SRe2L's successor EDC (Shao et al. 2024), because it scored higher than noise in
5 of 6 cells on digits at one image per class, under the teacher recipe and DC's protocol on three networks (the
``sre2l-noise`` rows of ``benchmarks/teacher.py``); one Adam
over all batches instead of a fresh one
per batch (Adam is elementwise and each image's gradient comes from its own batch alone, so the updates are the
same); the roll's range is scaled with the side, 0 .. side // 8 pixels (the CIFAR script: 0 .. 4 at 32 px; 0 .. 1 on
the 8x8 digits, where the script's range would be half the image; its Tiny-ImageNet script rolls by -4 .. 4 after
the crop, here 0 .. 8 at 64 px); the images are kept as floats (the released
code saves JPEGs).

Scale: under torchrun each rank recovers the images of its classes (class c is rank ``c % world``'s): it runs the
teacher on those only, adds its per-batch sums of the batch-norm inputs to the other ranks' (a differentiable
all-reduce) so the statistics are those of the whole batch, and the image gradients are summed over the ranks,
so every rank takes the one-process step (equal within float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distilset.augment import random_boxes, resized_crops
from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.methods.base import (
    Context,
    Distiller,
    MethodConfig,
    TeacherOption,
    check_finite,
    prepare_teacher,
    restore_optimizer,
)
from distilset.methods.registry import Preset, register_method
from distilset.recipes import teacher_recipe
from distilset.synset import SyntheticSet
from distilset.teachers import TeacherNet
from distilset.train import cosine_factor


@dataclass(frozen=True)
class SRe2LConfig(MethodConfig, TeacherOption):
    """SRe2L: recover images from a teacher's batch-norm statistics, relabel with it (Yin, Xing & Shen 2023)."""

    ipc: int = 10
    """Synthetic images per class."""
    lr: float = 0.25
    """Adam learning rate on the images (cosine decay over the run)."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam's betas."""
    r_bn: float = 0.01
    """Weight of the batch-norm statistics loss (alpha_BN)."""
    first_bn_multiplier: float = 10.0
    """Extra weight of the first batch-norm layer's statistics."""
    jitter: Literal["roll", "crop"] | None = auto("crop on inputs of 64 px or more (ImageNet), else roll (CIFAR)")
    """Per-iteration augmentation: roll only, or a random resized crop (area 0.08-1) and flip, then a roll."""
    roll: int | None = auto("side // 8 pixels (4 at 32 px, as SRe2L's CIFAR script; at least 1)")
    """Rolls shift the images by 0 .. roll pixels along each axis (SRe2L's `randint(0, jitter)`)."""
    batch_classes: int = 100
    """Classes per recovery batch, one image each (the batch-norm statistics are a batch's)."""
    init: Literal["real", "noise"] = "real"
    """Start from random real images of each class (EDC's real-image initialisation), or from Gaussian noise
    (SRe2L's start)."""

    ITERATIONS: ClassVar[int] = 1000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr",)
    NONFINITE_HINT: ClassVar[str] = "lower `lr` or `r_bn`, or resume to continue from the last good state"

    def check(self) -> None:
        self.require_finite("lr", "r_bn", "first_bn_multiplier")
        self.require_positive("lr")
        self.require_at_least(0, "r_bn", "first_bn_multiplier")
        self.require_at_least(1, "ipc", "roll", "batch_classes")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"`betas` must be two numbers in [0, 1), got {self.betas}")

    def check_ranks(self, world: int) -> None:
        self.check_teacher_ranks(world)

    def resolve(self, data: Dataset) -> tuple[SRe2LConfig, dict[str, str]]:
        if len(data.image_shape) != 3 or data.token_embedding is not None:
            raise ConfigError(f"SRe2L recovers images (C, H, W); {data.info.name} has inputs of {data.image_shape}")
        if data.zca is not None:
            raise ConfigError(
                "SRe2L clips recovered pixels to the valid range, which ZCA-whitened space does not "
                "have; load the dataset without `zca`"
            )
        side = min(data.image_shape[1:])
        return self.fill(
            jitter=("crop", f"{side} px inputs, ImageNet-like")
            if side >= 64
            else ("roll", f"{side} px inputs: SRe2L's CIFAR setting (no crop, a roll)"),
            roll=(max(1, side // 8), f"side // 8 for {side} px, at least 1"),
        )


class SRe2L(Distiller):
    """Stepwise recovery (``distilset.methods.runner`` drives it); ``teacher``: the one the ``prepare`` hook trained
    or read."""

    def __init__(self, data: Dataset, cfg: SRe2LConfig, ctx: Context | None = None, *, teacher: TeacherNet):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        ctx, self.teacher = self.ctx, teacher
        teacher.check_data(data)
        self.net = teacher.module.to(ctx.device).eval().requires_grad_(False)
        self.norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.norms:
            raise DistilsetError(
                f"SRe2L matches batch-norm statistics, and the teacher ({teacher.describe()}) has no "
                "batch-norm layer; train one with a batch-norm net (`distilset teacher --net "
                "convnet-bn`)"
            )
        self.iterations = ctx.iterations or cfg.ITERATIONS
        k, ipc = data.num_classes, cfg.ipc
        self.labels = torch.arange(k).repeat_interleave(ipc)
        if cfg.init == "real":
            start = data.train_x[data.sample_per_class(ipc, self.generator)].clone()
        else:
            start = torch.randn(k * ipc, *data.image_shape, generator=self.generator)
        self.images = start.to(ctx.device)
        self.images.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.images], lr=cfg.lr, betas=cfg.betas)
        # batch of image c * ipc + j: one per image index j and group of `batch_classes` classes
        groups = math.ceil(k / min(cfg.batch_classes, k))
        self.batch_of = torch.tensor([j * groups + c // cfg.batch_classes for c in range(k) for j in range(ipc)])
        self.num_batches = ipc * groups
        self.batch_sizes = torch.bincount(self.batch_of, minlength=self.num_batches).double()
        self.mine = torch.tensor([self.shards.mine(int(c)) for c in self.labels])
        norm = data.info.norm
        shape = (1, -1, 1, 1)
        self.low = ((0 - torch.tensor(norm.mean)) / torch.tensor(norm.std)).view(shape).to(ctx.device)
        self.high = ((1 - torch.tensor(norm.mean)) / torch.tensor(norm.std)).view(shape).to(ctx.device)
        self.flip = data.flips

    # ---- one recovery iteration -------------------------------------------------------------------------------
    def _jitter(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """The images of this rank, each moved by its batch's draw (crop and flip, then roll); every rank draws
        every batch's numbers, so the generators stay in step."""
        g, nb, (h, w) = self.generator, self.num_batches, self.data.image_shape[1:]
        if self.cfg.jitter == "crop":
            boxes = random_boxes(nb, (h, w), (0.08, 1.0), g)
            flips = torch.rand(nb, generator=g) < 0.5 if self.flip else torch.zeros(nb, dtype=torch.bool)
            x = resized_crops(x, boxes[batch])
            x = torch.where(flips[batch].view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
        shifts = torch.randint(self.cfg.roll + 1, (nb, 2), generator=g)[batch].to(x.device)
        rows = (torch.arange(h, device=x.device) - shifts[:, :1]) % h  # torch.roll: out[i] = x[i - shift]
        cols = (torch.arange(w, device=x.device) - shifts[:, 1:]) % w
        n, c = x.shape[:2]
        x = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
        return x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's share of the recovery loss (the batch-norm part from the statistics of whole batches)."""
        own = torch.nonzero(self.mine, as_tuple=True)[0]
        batch = self.batch_of[own]
        x = self._jitter(self.images[own.to(self.device)], batch)
        sums: list[tuple[torch.Tensor, torch.Tensor, int]] = []

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            v = inputs[0].double()
            b = batch.to(v.device)
            s1 = torch.zeros(self.num_batches, v.shape[1], dtype=v.dtype, device=v.device)
            s2 = torch.zeros_like(s1)
            sums.append(
                (s1.index_add(0, b, v.sum((2, 3))), s2.index_add(0, b, v.pow(2).sum((2, 3))), v.shape[2] * v.shape[3])
            )

        hooks = [m.register_forward_pre_hook(record) for m in self.norms]
        try:
            logits = self.net(x)
        finally:
            for hook in hooks:
                hook.remove()
        count = self.batch_sizes.to(self.device)
        ce = F.cross_entropy(logits, self.labels[own].to(self.device), reduction="none")
        ce = (ce.double() / count[batch.to(self.device)]).sum()
        bn = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (layer, (s1, s2, pixels)) in enumerate(zip(self.norms, sums, strict=True)):
            s1, s2 = self.shards.sum_with_grad(s1), self.shards.sum_with_grad(s2)
            mean = s1 / (count[:, None] * pixels)
            var = s2 / (count[:, None] * pixels) - mean.pow(2)
            gap = (var - layer.running_var.double()).norm(dim=1) + (mean - layer.running_mean.double()).norm(dim=1)
            bn = bn + (self.cfg.first_bn_multiplier if i == 0 else 1.0) * gap.sum()
        total = ce + self.cfg.r_bn * bn
        ce_all, bn_value = float(self.shards.sum_(ce.detach().clone())), float(bn.detach())
        return total, {"loss": ce_all + self.cfg.r_bn * bn_value, "ce": ce_all, "bn": bn_value}

    def outer_step(self, iteration: int) -> dict[str, float]:
        lr = self.cfg.lr * cosine_factor(iteration, self.iterations, 0, floor=0.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.loss()
        loss.backward()
        self.shards.sum_grads([self.images])
        check_finite("SRe2L's recovery loss or image gradient", metrics["loss"], self.images.grad)
        self.optimizer.step()
        with torch.no_grad():
            self.images.copy_(torch.maximum(torch.minimum(self.images, self.high), self.low))
        return {**metrics, "lr": lr}

    # ---- checkpointing and result --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "images": self.images.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        planned = state.get("iterations", self.iterations)
        if planned != self.iterations:  # the cosine spans the run: another length is another schedule
            raise ConfigError(
                f"this SRe2L run was planned for {planned} iterations (its lr's cosine spans them); resume it with "
                f"`iterations` {planned}, or start a new run for {self.iterations}"
            )
        with torch.no_grad():
            self.images.copy_(state["images"])
        restore_optimizer(self.optimizer, state["optimizer"], self.cfg.lr)
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The recovered images with their classes, the teacher, and the teacher recipe (students are trained on
        its soft labels of augmented views); the student net defaults to the teacher's architecture."""
        t = self.teacher
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.clone(),
            method="sre2l",
            recipe=teacher_recipe(len(self.labels), self.data.num_classes, self.flip),
            net={"name": t.net, "kwargs": dict(t.kwargs), "init": "default"},
            teacher=t,
            extra={"teacher_test_accuracy": t.test_accuracy},
        )


register_method(
    "sre2l",
    SRe2LConfig,
    SRe2L,
    presets={
        "sre2l-cifar100": Preset(
            "cifar100",
            1000,
            {"ipc": 50, "lr": 0.25, "r_bn": 0.01, "jitter": "roll", "roll": 4, "init": "noise"},
            "the released CIFAR-100 recovery script; give it its teacher with --teacher (a ResNet-18 trained 200 "
            "epochs: distilset teacher --net resnet18 --net-arg norm=batch --epochs 200); students train by the "
            "teacher recipe (FKD's ImageNet settings), not the released relabel_cifar script",
        ),
    },
    data_parallel=True,
    prepare=prepare_teacher,
)
