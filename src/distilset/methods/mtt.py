"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al. 2022), with the tileable
texture mode of "Wearable ImageNet" (Cazenavette et al. 2022).

Per outer iteration: pick an expert and a start epoch t < ``max_start_epoch``; the student starts from the
expert's parameters theta*_t and takes ``syn_steps`` SGD steps with the learnable lr on DSA-augmented
minibatches of the synthetic images (hard labels); the loss is

    ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2,    M = expert_epochs,

back-propagated through the whole student trajectory to the images and the lr, each updated by SGD with
momentum 0.5. The student keeps its parameters as one flat vector (``FlatStudent``, as the released code's
``ReparamModule``). ``memory="checkpoint"`` recomputes the trajectory in segments (``distilset.unroll``): the same
gradient with peak memory flat in ``syn_steps``.

Texture mode: every synthetic item is a canvas ``canvas`` times the image size; every student step trains
on a random toroidal roll-and-crop of each canvas, so the canvas becomes a seamless, tileable texture.

Defaults are the released code's (``distill.py``: IPC 1, 20 student steps, 3 expert epochs, lr_img 1000,
lr_lr 1e-5, initial lr 0.01). Resolved from the dataset when not given: the net (ConvNet-3, shallower on
inputs too small for three poolings), the experts' batch (see ``experts.py``) and ``max_start_epoch``: the
paper's CIFAR-10 start range (2 / 20 / 40 epochs of 196 SGD steps at IPC 1 / 10 / 50) kept in SGD steps,
so experts of a large dataset are not trained for dozens of needless epochs. Without ``experts_dir`` the
experts are trained first, into ``OUT/experts`` (``num_experts`` of them, ``max_start_epoch +
expert_epochs`` epochs each); an existing experts directory is used as it is.

Deviations, all named: the learned lr takes the paper's SGD-with-momentum step, applied multiplicatively
and clipped, lr <- lr * exp(clip(step / lr, +-lr_max_step)): to first order the paper's update, but the lr
can never turn negative (a known failure of the paper's additive update) nor change by more than a factor
exp(lr_max_step) (10 %) in one iteration (the 0.06 -> 2.8e5 jumps that end in NaN); a non-finite loss or
gradient stops the run after saving the last good state. ``num_experts`` defaults to 5 (the paper: 100).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch.func import functional_call

from distilset.augment import dsa, toroidal_crop
from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.files import EXPERTS_DIR
from distilset.methods.base import Context, Distiller, MethodConfig, PixelStatsOption, check_finite, restore_optimizer
from distilset.methods.experts import (
    MANIFEST,
    ExpertBuffer,
    ExpertConfig,
    expert_batch_for,
    train_experts,
    unflatten,
)
from distilset.methods.registry import Preset, register_method
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.recipes import Standard
from distilset.synset import SyntheticSet
from distilset.unroll import unrolled_gradient

# The paper's CIFAR-10 rows draw start epochs below 2 / 20 / 40 (IPC 1 / 10 / 50); one CIFAR-10 epoch is
# 196 SGD steps at batch 256. Kept in steps, the range becomes max_start_epoch on any dataset.
CIFAR_STEPS_PER_EPOCH = 196
START_RANGE_EPOCHS = ((50, 40), (10, 20), (1, 2))  # (smallest ipc, CIFAR-10 epochs)


@dataclass(frozen=True)
class MTTConfig(MethodConfig, NetOption, PixelStatsOption):
    """MTT: matching training trajectories (Cazenavette et al. 2022), with tileable textures (2022)."""

    ipc: int = 1
    """Synthetic images per class."""
    syn_steps: int = 20
    """Student SGD steps on the synthetic data per iteration."""
    expert_epochs: int = 3
    """Expert epochs the student's steps must match (M)."""
    max_start_epoch: int | None = auto("the paper's CIFAR-10 start range in SGD steps (392 at IPC 1)")
    """Start epochs are drawn below this."""
    lr_img: float = 1000.0
    """SGD learning rate on the images."""
    lr_lr: float = 1e-5
    """SGD learning rate on the learned student lr."""
    lr_teacher: float = 0.01
    """Initial learned student lr."""
    lr_max_step: float = 0.1
    """Largest change of log(learned lr) in one iteration: the lr stays positive and moves at most ~10 %."""
    momentum: float = 0.5
    """Momentum of the image and lr updates."""
    batch_syn: int | None = None
    """Synthetic images per student step; none: all of them."""
    init: Literal["real", "noise"] = "real"
    """Start from random real images of each class, or from Gaussian noise."""
    dsa: bool = True
    """Augment the student's batches (and the experts') with the dataset's DSA strategy."""
    experts_dir: str | None = None
    """Experts directory (from `distilset experts`), used as it is, or trained there if it does not exist yet;
    none: OUT/experts."""
    num_experts: int = 5
    """Experts to train when there are none yet (the paper: 100)."""
    expert_train_epochs: int | None = auto("max_start_epoch + expert_epochs")
    """Epochs of each expert trained here."""
    expert_lr: float = 0.01
    """SGD learning rate of the experts trained here."""
    expert_batch: int | None = auto("256, or fewer on small training sets: about 50 steps per epoch")
    """Minibatch size of the experts trained here."""
    trajectories: int = 1
    """Expert trajectories matched per iteration, their losses and gradients averaged (the paper: 1); under
    torchrun they are spread over the processes, so give at least as many as there are processes."""
    memory: Literal["plain", "checkpoint"] = "plain"
    """Gradient path: the plain unrolled graph, or segment checkpointing (same gradient, memory flat)."""
    segment: int = 5
    """Memory checkpoint: student steps per recomputed segment."""
    texture: bool = False
    """Distil tileable textures: each item a canvas trained on random toroidal crops."""
    canvas: int = 2
    """Texture mode: canvas side in image sides."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "Network of the experts and the student."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "the experts' net, else convnet"}
    ITERATIONS: ClassVar[int] = 300
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr_img", "lr_lr", "pixel_stats", "trajectories")
    NONFINITE_HINT: ClassVar[str] = "lower `lr_img` (or `lr_lr`), or resume to continue from the last good state"

    def check(self) -> None:
        self.require_positive("lr_img", "lr_lr", "lr_teacher", "lr_max_step", "expert_lr")
        self.require_at_least(0, "momentum")
        self.require_at_least(
            1,
            "ipc",
            "syn_steps",
            "expert_epochs",
            "max_start_epoch",
            "batch_syn",
            "num_experts",
            "expert_train_epochs",
            "trajectories",
            "expert_batch",
            "segment",
            "canvas",
        )

    def check_ranks(self, world: int) -> None:
        if world == 1:
            return
        if self.trajectories < world:
            raise ConfigError(
                f"MTT spreads its expert trajectories over the {world} processes, but `trajectories` "
                f"is {self.trajectories}; give --trajectories {world} (or a multiple of it)"
            )
        if self.experts_dir is None or not (Path(self.experts_dir) / MANIFEST).exists():
            raise ConfigError(
                "under torchrun MTT reads trained experts (the other processes would wait out their "
                "timeout while one trains them): train them first with `distilset experts` (--ray "
                "spreads them) and give `experts_dir`"
            )

    def require_trajectories(self, epochs: int, where: str) -> int:
        """Refuse experts of ``epochs`` epochs (``where`` says whose) too short for the latest target this config
        can draw: start epochs below ``max_start_epoch`` plus ``expert_epochs``. Returns that latest epoch."""
        last = self.max_start_epoch - 1 + self.expert_epochs
        if last > epochs:
            raise ConfigError(
                f"start epochs below `max_start_epoch` {self.max_start_epoch} plus `expert_epochs` "
                f"{self.expert_epochs} need experts of at least {last} epochs; {where} {epochs}"
            )
        return last

    def expert_config(self) -> ExpertConfig:
        return ExpertConfig(
            net=self.net,
            net_kwargs=self.net_kwargs,
            epochs=self.expert_train_epochs,
            lr=self.expert_lr,
            batch_size=self.expert_batch,
            dsa=self.dsa,
        )

    def resolve(self, data: Dataset) -> tuple[MTTConfig, dict[str, str]]:
        if len(data.image_shape) != 3:
            raise ConfigError(f"MTT distils images (C, H, W); {data.info.name} has shape {data.image_shape}")
        if self.texture and data.zca is not None:
            raise ConfigError(
                "texture mode cannot use ZCA: whitening mixes pixels across the canvas seams, so the "
                "texture would not tile; load the dataset without `zca`"
            )
        if self.init == "real":
            data.require_per_class(self.ipc)  # before any expert is trained
        start_range = next(e for low, e in START_RANGE_EPOCHS if self.ipc >= low) * CIFAR_STEPS_PER_EPOCH
        existing = self.experts_dir is not None and (Path(self.experts_dir) / MANIFEST).exists()
        if existing:  # take the net and the trajectories' length from the experts
            made = ExpertBuffer.read_manifest(Path(self.experts_dir))["config"]
            cfg, notes = self.fill(
                expert_train_epochs=(made["epochs"], "the experts' length"),
                expert_batch=(made["batch_size"], "the experts' batch"),
            )
            if (cfg.net or made["net"]) == made["net"] and not cfg.net_kwargs and made["net_kwargs"]:
                cfg, notes = replace(cfg, net_kwargs=made["net_kwargs"]), {**notes, "net_kwargs": "the experts'"}
            cfg, more = cfg.fill_net(data.image_shape, (made["net"], f"the net of the experts in {self.experts_dir}"))
            notes.update(more)
        else:
            n = len(data.train_x)
            cfg, notes = self.fill_net(
                data.image_shape,
                ("convnet", "MTT's ConvNet"),
                expert_batch=(expert_batch_for(n), f"about 50 SGD steps per epoch of {n} images"),
            )
        steps_per_epoch = math.ceil(len(data.train_x) / cfg.expert_batch)
        start = max(1, round(start_range / steps_per_epoch))
        why = (
            f"the paper's start range at IPC {self.ipc}, {start_range} SGD steps, is "
            f"{start_range / steps_per_epoch:.1f} epochs of {steps_per_epoch} steps here"
        )
        if existing and start > cfg.expert_train_epochs + 1 - cfg.expert_epochs:
            start = cfg.expert_train_epochs + 1 - cfg.expert_epochs
            why += f", cut to {start} by the experts' {cfg.expert_train_epochs} epochs"
        cfg, more = cfg.fill(max_start_epoch=(start, why))
        notes.update(more)
        cfg, more = cfg.fill(
            expert_train_epochs=(cfg.max_start_epoch + cfg.expert_epochs, "max_start_epoch + expert_epochs")
        )
        notes.update(more)
        cfg.require_trajectories(cfg.expert_train_epochs, "the experts have `expert_train_epochs`")
        cfg, more = cfg.fill_pixel_stats(data)
        return cfg, {**notes, **more}


class FlatStudent(torch.nn.Module):
    """The student network reading all its parameters from one flat vector, its parameter ``flat`` (the released
    code's ``ReparamModule``): an unrolled SGD step over ``{"flat": theta}`` is one multiply and one subtraction
    instead of one pair per parameter tensor, and the matching loss compares vectors with no concatenation.
    ``shapes``: the parameters' names and shapes in the experts' order."""

    def __init__(self, net: torch.nn.Module, shapes: list[tuple[str, tuple[int, ...]]]):
        super().__init__()
        self.net, self.shapes = net, shapes
        self.flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, unflatten(self.flat, self.shapes), (x,), strict=False)


class MTT(Distiller):
    """Trajectory matching over an experts directory; stepwise and checkpointable (``distilset.methods.runner``).
    ``experts``: the buffer (or its directory) the ``prepare`` hook made or found."""

    def __init__(
        self, data: Dataset, cfg: MTTConfig, ctx: Context | None = None, *, experts: ExpertBuffer | str | Path
    ):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        device = self.device
        self.experts = experts if isinstance(experts, ExpertBuffer) else ExpertBuffer(experts)
        self.experts.check_compatible(data, cfg.net, cfg.net_kwargs)
        last = cfg.require_trajectories(self.experts.epochs, f"{self.experts.path} has")
        self.experts.verify(last)  # every file and epoch a step may read, checked before the first iteration
        k, c, h, w = data.num_classes, *data.image_shape
        self.labels = torch.arange(k).repeat_interleave(cfg.ipc).to(device)
        side = (cfg.canvas * h, cfg.canvas * w) if cfg.texture else (h, w)
        images = self._init_images(k, c, side)
        self.images = images.to(device).requires_grad_(True)
        self.syn_lr = torch.tensor(cfg.lr_teacher, device=device).requires_grad_(True)
        self.lr_momentum = torch.zeros((), device=device)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.model = create_net(cfg.net, data.image_shape, k, seed=0, **cfg.net_kwargs).to(device)
        self.student = FlatStudent(self.model, self.experts.param_shapes)
        self.strategy = data.info.dsa_strategy if cfg.dsa else None

    def _init_images(self, k: int, c: int, side: tuple[int, int]) -> torch.Tensor:
        cfg, g = self.cfg, self.generator
        if cfg.init == "noise":
            return torch.randn(k * cfg.ipc, c, *side, generator=g)
        real = self.data.train_x[self.data.sample_per_class(cfg.ipc, g)]
        if cfg.texture:  # a real image, tiled to fill the canvas
            real = real.repeat(1, 1, cfg.canvas, cfg.canvas)[..., : side[0], : side[1]]
        return real.clone()

    # ---- one outer iteration --------------------------------------------------------------------------
    def _plan(self) -> tuple[int, int, list[torch.Tensor], list[int]]:
        """Random expert, start epoch, and each student step's minibatch and augmentation seed, drawn up
        front so that the checkpointed path recomputes exactly the same steps."""
        g, cfg = self.generator, self.cfg
        expert = self.experts.ids[int(torch.randint(len(self.experts), (1,), generator=g))]
        start = int(torch.randint(cfg.max_start_epoch, (1,), generator=g))
        n = len(self.labels)
        batch = cfg.batch_syn or n
        order: list[torch.Tensor] = []
        while len(order) < cfg.syn_steps:
            perm = torch.randperm(n, generator=g)
            order += [perm[i : i + batch] for i in range(0, n, batch)]
        seeds = torch.randint(2**62, (cfg.syn_steps, 2), generator=g).tolist()
        return expert, start, [o.to(self.device) for o in order[: cfg.syn_steps]], seeds

    def student_batch(self, idx: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """The synthetic minibatch one student step trains on: cropped (texture mode), then augmented."""
        x = self.images[idx]
        if self.cfg.texture:
            x = toroidal_crop(x, tuple(self.data.image_shape[1:]), seed=seeds[0])
        if self.strategy:
            x = dsa(x, self.strategy, seed=seeds[1], siamese=False)
        return x

    def matching_loss(self, expert: int, start: int, order, seeds, memory: str | None = None):
        """The normalised trajectory-matching loss and its gradients w.r.t. (images, syn_lr)."""
        cfg, dev = self.cfg, self.device
        theta_start = {"flat": self.experts.flat(expert, start).to(dev)}
        target = self.experts.flat(expert, start + cfg.expert_epochs).to(dev)
        denom = (theta_start["flat"] - target).pow(2).sum()
        if not denom > 0:
            raise DistilsetError(f"expert {expert} did not move between epochs {start} and {start + cfg.expert_epochs}")

        def step_fn(t: int):
            return self.student_batch(order[t], seeds[t]), self.labels[order[t]], self.syn_lr

        def outer(params):
            return (params["flat"] - target).pow(2).sum() / denom

        memory = memory or cfg.memory
        segment = min(cfg.segment, cfg.syn_steps) if memory == "checkpoint" else None
        return unrolled_gradient(
            self.student, theta_start, step_fn, cfg.syn_steps, outer, [self.images, self.syn_lr], segment=segment
        )

    def outer_step(self, iteration: int) -> dict[str, float]:
        plans = [self._plan() for _ in range(self.cfg.trajectories)]  # every rank draws every plan
        loss = torch.zeros((), dtype=torch.float64)
        g_img, g_lr = torch.zeros_like(self.images), torch.zeros_like(self.syn_lr)
        for j, plan in enumerate(plans):
            if self.shards.mine(j):  # data-parallel: trajectory j is rank j % world's
                one, (gi, gl) = self.matching_loss(*plan)
                loss, g_img, g_lr = loss + float(one), g_img + gi, g_lr + gl
        for total in (loss, g_img, g_lr):  # summed over the ranks, then averaged over the trajectories
            self.shards.sum_(total).div_(len(plans))
        check_finite("the trajectory-matching loss or gradient", loss, g_img, g_lr)
        self.images.grad = g_img
        self.opt_img.step()
        self.opt_img.zero_grad(set_to_none=True)
        self._update_lr(g_lr)
        start = sum(plan[1] for plan in plans) / len(plans)
        return {"loss": float(loss), "syn_lr": self.syn_lr.item(), "start_epoch": float(start)}

    def _update_lr(self, grad: torch.Tensor) -> None:
        """The paper's SGD-with-momentum step on the lr, applied multiplicatively and clipped (see above)."""
        cfg = self.cfg
        with torch.no_grad():
            self.lr_momentum.mul_(cfg.momentum).add_(grad)
            step = -cfg.lr_lr * self.lr_momentum
            ratio = (step / self.syn_lr).clamp(-cfg.lr_max_step, cfg.lr_max_step)
            self.syn_lr.mul_(ratio.exp())

    # ---- checkpointing and result ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu(),
            "syn_lr": self.syn_lr.detach().cpu(),
            "lr_momentum": self.lr_momentum.cpu(),
            "opt_img": self.opt_img.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.syn_lr.copy_(state["syn_lr"])
            self.lr_momentum.copy_(state["lr_momentum"])
        restore_optimizer(self.opt_img, state["opt_img"], self.cfg.lr_img)
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The images and their learned lr; the recipe is MTT's evaluation: SGD with that lr and DSA, 1000
        epochs (on random crops of each canvas in texture mode)."""
        extra: dict[str, Any] = {"experts": str(self.experts.path), "n_experts": len(self.experts)}
        crop = tuple(self.data.image_shape[1:]) if self.cfg.texture else None
        syn = SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.cpu().clone(),
            method="mtt",
            recipe=Standard(lr=self.syn_lr.item(), dsa=self.strategy, epochs=1000, crop=crop),
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
            extra=extra,
        )
        return self.cfg.finish_set(syn, self.data)


def _prepare(data: Dataset, cfg: MTTConfig, ctx: Context) -> dict[str, ExpertBuffer]:
    """The experts in ``experts_dir`` (default OUT/experts), trained there first if there are none (data-parallel
    runs are given trained experts: ``MTTConfig.check_ranks``)."""
    if cfg.experts_dir is not None:
        path = Path(cfg.experts_dir)
    elif ctx.out is not None:
        path = ctx.out / EXPERTS_DIR
    else:
        path = Path(tempfile.mkdtemp(prefix="distilset-experts-"))
    expert_cfg, _ = cfg.expert_config().resolve(data)
    if (path / MANIFEST).exists():  # a given directory is used as it is; our own is completed if interrupted
        manifest = ExpertBuffer.read_manifest(path)
        unfinished = (
            cfg.experts_dir is None
            and len(manifest["experts"]) < cfg.num_experts
            and manifest["config"] == expert_cfg.to_json()
        )
    if not (path / MANIFEST).exists() or unfinished:
        ctx.log(f"training {cfg.num_experts} experts x {cfg.expert_train_epochs} epochs into {path}")
        train_experts(data, path, cfg.num_experts, expert_cfg, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
    return {"experts": ExpertBuffer(path)}


# The paper's CIFAR-10 rows (run `distilset experts` with 100 experts x 50 epochs and ZCA first), and our
# settings for the grey-scale sets: the no-ZCA CIFAR-10 learning rates with shorter trajectories.
_GREY_1 = {
    "ipc": 1,
    "syn_steps": 50,
    "expert_epochs": 2,
    "max_start_epoch": 5,
    "lr_img": 1000.0,
    "lr_lr": 1e-7,
    "lr_teacher": 0.01,
}
_GREY_10 = {
    "ipc": 10,
    "syn_steps": 20,
    "expert_epochs": 2,
    "max_start_epoch": 10,
    "lr_img": 1000.0,
    "lr_lr": 1e-5,
    "lr_teacher": 0.01,
}
register_method(
    "mtt",
    MTTConfig,
    MTT,
    presets={
        "mtt-cifar10-ipc1": Preset(
            "cifar10",
            5000,
            {
                "ipc": 1,
                "syn_steps": 50,
                "expert_epochs": 2,
                "max_start_epoch": 2,
                "lr_img": 100.0,
                "lr_lr": 1e-7,
                "lr_teacher": 0.01,
                "num_experts": 100,
                "expert_train_epochs": 50,
            },
            "paper: 46.3 % (ZCA)",
        ),
        "mtt-cifar10-ipc10": Preset(
            "cifar10",
            5000,
            {
                "ipc": 10,
                "syn_steps": 30,
                "expert_epochs": 2,
                "max_start_epoch": 20,
                "lr_img": 100.0,
                "lr_lr": 1e-5,
                "lr_teacher": 0.001,
                "num_experts": 100,
                "expert_train_epochs": 50,
            },
            "paper: 65.3 % (ZCA)",
        ),
        "mtt-cifar10-ipc50": Preset(
            "cifar10",
            5000,
            {
                "ipc": 50,
                "syn_steps": 30,
                "expert_epochs": 2,
                "max_start_epoch": 40,
                "lr_img": 1000.0,
                "lr_lr": 1e-5,
                "lr_teacher": 0.001,
                "num_experts": 100,
                "expert_train_epochs": 50,
            },
            "paper: 71.6 % (no ZCA)",
        ),
        "mtt-fashion-ipc1": Preset("fashion-mnist", 1000, _GREY_1),
        "mtt-fashion-ipc10": Preset("fashion-mnist", 1000, _GREY_10),
        "mtt-mnist5k-ipc1": Preset("mnist5k", 1000, _GREY_1),
        "mtt-mnist5k-ipc10": Preset("mnist5k", 1000, _GREY_10),
    },
    data_parallel=True,
    prepare=_prepare,
)
