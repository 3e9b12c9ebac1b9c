"""KIP (Kernel Inducing Points) and LS (Label Solve): support sets for kernel ridge regression with the kernel of
an infinitely wide network (Nguyen, Chen & Lee, ICLR 2021; Nguyen, Novak, Xiao & Lee, NeurIPS 2021).

Read beside KIP's Algorithm 1:

1. The support set starts as class-balanced random real images with centred one-hot labels (one-hot - 1/K).
2. Each iteration draws a fresh class-balanced batch of real target images, predicts their labels by kernel
   ridge regression on the support, K_ts (K_ss + reg tr(K_ss)/n I)^-1 Y_s (``distilset.kernels.krr``), and
   takes one Adam step (lr 0.04) on the support images (and, with ``learn_labels``, on their labels) down the
   mean squared error to the targets' centred one-hot labels.

LS keeps random real images and solves their labels in closed form: with A = K_ts (K_ss + reg)^-1 over a large
target set, Y_s = argmin ||A Y_s - Y_t||^2 (least squares), one step.

Both sets carry the ``KernelRidge`` recipe (evaluation is kernel regression with the same kernel);
``evaluate --protocol standard`` trains finite networks on them with MSE on the learned targets, as KIP's
transfer experiments do.

Defaults and deviations, named: the kernel is the NTK of a 1-hidden-layer fully connected ReLU network
(``arch`` fc), because the papers' convolutional kernels cost seconds (no pooling) to minutes (pooled ConvNet)
per step on a 2-core CPU for 100 support images (see the kernel benchmark); ``--arch conv`` / ``convnet`` give
them. The target batch is 1000 images (the papers use larger ones on accelerators); 1000 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.kernels import architecture, centred_one_hot, krr
from distilset.methods.base import Context, Distiller, MethodConfig, NonFiniteError, restore_optimizer
from distilset.methods.registry import register_method
from distilset.nets.registry import convnet_depth_for
from distilset.recipes import KernelRidge
from distilset.synset import SyntheticSet


@dataclass(frozen=True)
class KernelConfig(MethodConfig):
    """Options shared by KIP and LS: the support size and the kernel."""

    ipc: int = 10
    """Support images per class."""
    arch: Literal["fc", "conv", "convnet"] = "fc"
    """Kernel of an infinitely wide fc (dense), conv (3x3 convolutions, no pooling) or convnet (with pooling)."""
    depth: int | None = auto("1 for fc; for conv / convnet, 3 or what the input allows (a 2x2 map at the end)")
    """Hidden layers of the kernel's network."""
    kernel: Literal["ntk", "nngp"] = "ntk"
    """Which infinite-width kernel."""
    reg: float = 1e-6
    """Kernel ridge, relative to the mean diagonal of the support kernel."""

    def check(self) -> None:
        self.require_at_least(1, "ipc", "depth")
        if not 0 <= self.reg < float("inf"):
            raise ConfigError(f"`reg` must be a finite number >= 0, got {self.reg}")

    def resolve(self, data: Dataset) -> tuple[KernelConfig, dict[str, str]]:
        if data.token_embedding is not None:
            raise ConfigError(
                f"kernel methods take images or embedded vectors; {data.info.name} holds token ids "
                "(use rotten-tomatoes-sentences)"
            )
        if self.arch != "fc" and len(data.image_shape) != 3:
            raise ConfigError(f"the {self.arch} kernel needs images (C, H, W); {data.info.name} has {data.image_shape}")
        data.require_per_class(self.ipc)
        if self.arch == "fc":
            return self.fill(depth=(1, "one hidden layer"))
        if self.arch == "conv":
            return self.fill(depth=(3, "DC's and KIP's three conv layers"))
        depth = convnet_depth_for(data.image_shape)
        return self.fill(
            depth=(
                depth,
                f"{depth} pooled stages leave a 2x2 map of {data.image_shape[1]}x{data.image_shape[2]} inputs",
            )
        )

    def recipe(self) -> KernelRidge:
        return KernelRidge(arch=self.arch, depth=self.depth, kernel=self.kernel, reg=self.reg)


@dataclass(frozen=True)
class KIPConfig(KernelConfig):
    """KIP: support images (and optionally labels) learned through kernel ridge regression (Nguyen et al. 2021)."""

    lr: float = 0.04
    """Adam learning rate on the support images (and labels)."""
    learn_labels: bool = False
    """Also learn the support labels (they start as centred one-hot)."""
    target_batch: int = 1000
    """Real target images per iteration, class-balanced (all of a smaller class's share)."""

    ITERATIONS: ClassVar[int] = 1000
    RESUMABLE: ClassVar[tuple[str, ...]] = ("lr",)
    NONFINITE_HINT: ClassVar[str] = "lower `lr` or raise `reg`, or resume to continue from the last good state"

    def check(self) -> None:
        super().check()
        self.require_positive("lr")
        self.require_at_least(1, "target_batch")

    def check_ranks(self, world: int) -> None:
        if self.target_batch < world:
            raise ConfigError(
                f"`target_batch` {self.target_batch} leaves some of the {world} processes no targets; "
                f"give at least {world}"
            )


@dataclass(frozen=True)
class LSConfig(KernelConfig):
    """Label Solve: real support images, labels solved in closed form for kernel regression (Nguyen et al. 2021)."""

    targets: int = 10000
    """Real target images the labels are solved for (the whole training set if smaller)."""

    ITERATIONS: ClassVar[int] = 1

    def check(self) -> None:
        super().check()
        self.require_at_least(1, "targets")


class KernelSupport(Distiller):
    """KIP / LS as a stepwise distiller (``distilset.methods.runner`` drives it)."""

    def __init__(self, data: Dataset, cfg: KernelConfig, ctx: Context | None = None, method: str | None = None):
        """``method`` (before 0.3: "kip" or "ls") now follows from the config's class; it is ignored."""
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        self.method = "kip" if isinstance(cfg, KIPConfig) else "ls"
        self.net = architecture(cfg.arch, cfg.depth)
        k = data.num_classes
        picks = data.sample_per_class(cfg.ipc, self.generator)
        self.images = data.train_x[picks].to(self.device).double().clone()
        self.labels = centred_one_hot(torch.arange(k).repeat_interleave(cfg.ipc), k).to(self.device)
        self.solved = False
        self.optimizer = None
        if isinstance(cfg, KIPConfig):
            self.images.requires_grad_(True)
            learned = [self.images]
            if cfg.learn_labels:
                self.labels.requires_grad_(True)
                learned.append(self.labels)
            self.optimizer = torch.optim.Adam(learned, lr=cfg.lr)

    def _targets(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A class-balanced batch of about ``n`` real training images and their centred one-hot labels."""
        k = self.data.num_classes
        per_class = max(1, n // k)
        x = torch.cat([self.data.class_batch(c, per_class, self.generator) for c in range(k)])
        y = torch.cat([torch.full((min(per_class, len(self.data.class_indices(c))),), c) for c in range(k)])
        return x.to(self.device).double(), centred_one_hot(y, k).to(self.device)

    def outer_step(self, iteration: int) -> dict[str, float]:
        return self._kip_step() if self.method == "kip" else self._solve_labels()

    def _kip_step(self) -> dict[str, float]:
        x_t, y_t = self._targets(self.cfg.target_batch)
        n = len(x_t)
        rows = self.shards.share(n)  # data-parallel: this rank's share of the targets (all of them in one process)
        x_t, y_t = x_t[rows], y_t[rows]
        kernel = self.cfg.kernel
        k_ss = self.net.kernel(self.images, self.images, get=kernel)
        k_ts = self.net.kernel(x_t, self.images, get=kernel)
        try:
            pred = krr(k_ss, k_ts, self.labels, reg=self.cfg.reg)
        except DistilsetError as e:
            raise NonFiniteError(f"KIP's support kernel broke down ({e})") from e
        loss = 0.5 * (pred - y_t).pow(2).sum() / n  # the mean over all n targets, once summed over the ranks
        loss = self.descend(self.optimizer, loss, "KIP's loss or support gradient")
        right = self.shards.sum_((pred.argmax(1) == y_t.argmax(1)).sum().double())
        return {"loss": loss, "target_acc": right.item() / n}

    def _solve_labels(self) -> dict[str, float]:
        cfg = self.cfg
        x_t, y_t = self._targets(min(cfg.targets, len(self.data.train_x)))
        with torch.no_grad():
            k_ss = self.net.kernel(self.images, self.images, get=cfg.kernel)
            k_ts = self.net.kernel(x_t, self.images, get=cfg.kernel)
            eye = torch.eye(len(k_ss), dtype=k_ss.dtype, device=k_ss.device)
            a = k_ts @ torch.linalg.inv(k_ss + cfg.reg * torch.trace(k_ss) / len(k_ss) * eye)
            self.labels = torch.linalg.lstsq(a, y_t).solution
            fit = (a @ self.labels).argmax(1) == y_t.argmax(1)
        self.solved = True
        return {"target_acc": fit.double().mean().item()}

    def state_dict(self) -> dict[str, Any]:
        state = {
            "images": self.images.detach().cpu(),
            "labels": self.labels.detach().cpu(),
            "generator": self.generator.get_state(),
        }
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
        if self.optimizer is not None:
            restore_optimizer(self.optimizer, state["optimizer"], self.cfg.lr)
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The support images and their regression targets (float32), with the kernel-regression recipe, and as its
        net the finite network the kernel describes, which ``--protocol standard`` trains (``recipes.KIP_TRANSFER``):
        for the fc kernel an MLP of its depth at KIP's transfer width 1024, for the conv kernels a ConvNet without
        normalisation of their depth."""
        if self.cfg.arch == "fc":
            net = {"name": "mlp", "kwargs": {"depth": self.cfg.depth, "width": 1024}, "init": "default"}
        else:
            net = {"name": "convnet", "kwargs": {"norm": "none", "depth": self.cfg.depth}, "init": "default"}
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.detach().cpu().float().clone(),
            labels=self.labels.detach().cpu().float().clone(),
            method=self.method,
            recipe=self.cfg.recipe(),
            net=net,
        )


register_method("kip", KIPConfig, KernelSupport, data_parallel=True)
register_method("ls", LSConfig, KernelSupport)
