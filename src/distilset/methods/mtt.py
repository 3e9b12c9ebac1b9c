"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al. 2022), with the tileable
texture mode of "Wearable ImageNet" (Cazenavette et al. 2022).

Per outer iteration: pick an expert and a start epoch t < ``max_start_epoch``; the student starts from the
expert's parameters theta*_t and takes ``syn_steps`` SGD steps with the learnable lr on DSA-augmented
minibatches of the synthetic images (hard labels); the loss is

    ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2,    M = expert_epochs,

back-propagated through the whole student trajectory to the images and the lr, each updated by SGD with
momentum 0.5. ``memory="checkpoint"`` recomputes the trajectory in segments (``distilset.unroll``): the same
gradient with peak memory flat in ``syn_steps``.

Texture mode: every synthetic item is a canvas ``canvas`` times the image size; every student step trains
on a random toroidal roll-and-crop of each canvas, so the canvas becomes a seamless, tileable texture.

Deviations, all named: the learned lr is clamped to ``min_syn_lr`` after each update (the paper lets it go
negative, a known failure); experts come from ``distilset experts`` (MTT's ``buffer.py`` defaults).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from distilset.augment import dsa, toroidal_crop
from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.methods.base import NonFiniteError
from distilset.methods.experts import ExpertBuffer
from distilset.nets import create_net
from distilset.synset import SyntheticSet
from distilset.unroll import unrolled_gradient

INITS = ("real", "noise")
MEMORY = ("plain", "checkpoint")


@dataclass(frozen=True)
class MTTConfig:
    """MTT settings; defaults are the paper's CIFAR-10 IPC 10 row (REFERENCES.md [4]; used with ZCA)."""

    ipc: int = 10
    syn_steps: int = 30
    expert_epochs: int = 2
    max_start_epoch: int = 20
    lr_img: float = 100.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.001  # initial student lr
    momentum: float = 0.5
    batch_syn: int | None = None  # None: all synthetic images in every student step
    init: str = "real"
    dsa: bool = True
    net: str = "convnet"
    net_kwargs: dict = field(default_factory=dict)
    memory: str = "plain"
    # checkpoint: student steps per recomputed segment. Memory ~ one segment's activations + one parameter
    # copy per segment; a fixed length keeps it flat in syn_steps (the student's parameters are small).
    segment: int = 5
    min_syn_lr: float = 1e-6
    texture: bool = False
    canvas: int = 2  # texture mode: canvas side = canvas x image side


class MTT:
    """Trajectory matching over an experts directory; stepwise and checkpointable (``methods.base.run``)."""

    def __init__(self, data: Dataset, experts: ExpertBuffer | str | Path, cfg: MTTConfig = MTTConfig(),
                 seed: int = 0, device: str = "cpu"):  # fmt: skip
        self._validate(data, cfg)
        self.experts = experts if isinstance(experts, ExpertBuffer) else ExpertBuffer(experts)
        self.experts.check_compatible(data, cfg.net, cfg.net_kwargs)
        last = cfg.max_start_epoch - 1 + cfg.expert_epochs  # the latest epoch a target can be
        if last > self.experts.epochs:
            raise DistilsetError(
                f"start epochs below {cfg.max_start_epoch} plus expert_epochs {cfg.expert_epochs} need experts of "
                f"at least {last} epochs; {self.experts.path} has {self.experts.epochs}"
            )
        self.data, self.cfg, self.seed, self.device = data, cfg, seed, device
        self.generator = torch.Generator().manual_seed(seed)
        k, c, h, w = data.num_classes, *data.image_shape
        self.labels = torch.arange(k).repeat_interleave(cfg.ipc).to(device)
        side = (cfg.canvas * h, cfg.canvas * w) if cfg.texture else (h, w)
        images = self._init_images(k, c, side)
        self.images = images.to(device).requires_grad_(True)
        self.syn_lr = torch.tensor(cfg.lr_teacher, device=device).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.momentum)
        self.model = create_net(cfg.net, data.image_shape, k, seed=0, **cfg.net_kwargs).to(device)
        self.strategy = data.info.dsa_strategy if cfg.dsa else None

    @staticmethod
    def _validate(data: Dataset, cfg: MTTConfig) -> None:
        if cfg.init not in INITS:
            raise DistilsetError(f"unknown init {cfg.init!r}; choose from {', '.join(INITS)}")
        if cfg.memory not in MEMORY:
            raise DistilsetError(f"unknown memory path {cfg.memory!r}; choose from {', '.join(MEMORY)}")
        for name in ("lr_img", "lr_lr", "lr_teacher", "min_syn_lr"):
            if not getattr(cfg, name) > 0:
                raise DistilsetError(f"{name} must be > 0, got {getattr(cfg, name)}")
        if min(cfg.ipc, cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.canvas, cfg.segment) < 1:
            raise DistilsetError("ipc, syn_steps, expert_epochs, max_start_epoch, canvas and segment must be >= 1")
        if cfg.batch_syn is not None and cfg.batch_syn < 1:
            raise DistilsetError(f"batch_syn must be >= 1 or None, got {cfg.batch_syn}")
        if cfg.texture and data.zca is not None:
            raise DistilsetError(
                "texture mode cannot use ZCA: whitening mixes pixels across the canvas seams, so the texture "
                "would not tile; load the dataset without --zca"
            )
        if len(data.image_shape) != 3:
            raise DistilsetError(f"MTT distils images (C, H, W); {data.info.name} has shape {data.image_shape}")

    def _init_images(self, k: int, c: int, side: tuple[int, int]) -> torch.Tensor:
        cfg, g = self.cfg, self.generator
        if cfg.init == "noise":
            return torch.randn(k * cfg.ipc, c, *side, generator=g)
        picks = []
        for cls in range(k):
            members = self.data.class_indices(cls)
            if len(members) < cfg.ipc:
                raise DistilsetError(f"--ipc {cfg.ipc} needs {cfg.ipc} images of class {cls}; it has {len(members)}")
            picks.append(members[torch.randperm(len(members), generator=g)[: cfg.ipc]])
        real = self.data.train_x[torch.cat(picks)]
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
        theta_start = self.experts.params(expert, start, dev)
        target = self.experts.flat(expert, start + cfg.expert_epochs).to(dev)
        denom = (self.experts.flat(expert, start).to(dev) - target).pow(2).sum()
        if not denom > 0:
            raise DistilsetError(f"expert {expert} did not move between epochs {start} and {start + cfg.expert_epochs}")

        def step_fn(t: int):
            return self.student_batch(order[t], seeds[t]), self.labels[order[t]], self.syn_lr

        def outer(params):
            flat = torch.cat([p.reshape(-1) for p in params.values()])
            return (flat - target).pow(2).sum() / denom

        memory = memory or cfg.memory
        segment = min(cfg.segment, cfg.syn_steps) if memory == "checkpoint" else None
        return unrolled_gradient(self.model, theta_start, step_fn, cfg.syn_steps, outer,
                                 [self.images, self.syn_lr], segment=segment)  # fmt: skip

    def step(self, iteration: int) -> dict[str, float]:
        expert, start, order, seeds = self._plan()
        loss, (g_img, g_lr) = self.matching_loss(expert, start, order, seeds)
        if not math.isfinite(float(loss)) or not torch.isfinite(g_img).all() or not torch.isfinite(g_lr):
            raise NonFiniteError(f"trajectory-matching loss or gradient is not finite (loss {float(loss)})")
        self.images.grad, self.syn_lr.grad = g_img, g_lr
        self.opt_img.step()
        self.opt_lr.step()
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        with torch.no_grad():  # keep the learned lr positive (the paper does not)
            self.syn_lr.clamp_(min=self.cfg.min_syn_lr)
        return {"loss": float(loss), "syn_lr": self.syn_lr.item(), "start_epoch": float(start)}

    # ---- checkpointing and result ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu(),
            "syn_lr": self.syn_lr.detach().cpu(),
            "opt_img": self.opt_img.state_dict(),
            "opt_lr": self.opt_lr.state_dict(),
            "generator": self.generator.get_state(),
            "config": repr(asdict(self.cfg)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config") != repr(asdict(self.cfg)):
            raise DistilsetError("the checkpoint was made with other settings; resume with the same options")
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.syn_lr.copy_(state["syn_lr"])
        self.opt_img.load_state_dict(state["opt_img"])
        self.opt_lr.load_state_dict(state["opt_lr"])
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        extra: dict[str, Any] = {"seed": self.seed, "experts": str(self.experts.path), "n_experts": len(self.experts)}
        if self.cfg.texture:
            extra["texture"] = {"canvas": self.cfg.canvas, "crop": list(self.data.image_shape[1:])}
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().clone(),
            labels=self.labels.cpu().clone(),
            method="mtt",
            train_lr=self.syn_lr.item(),
            dsa_strategy=self.strategy,
            net={"name": self.cfg.net, "kwargs": dict(self.cfg.net_kwargs), "init": "default"},
            config=asdict(self.cfg),
            extra=extra,
        )
