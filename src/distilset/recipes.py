"""How a synthetic set must be trained: its typed training recipe, saved in ``synset.json``.

- ``Standard``: plain minibatch training of a fresh network on the set (the DC / DSA / MTT protocol and
  its variants): optimiser, lr, momentum, weight decay, batch size, epochs or a step budget, lr schedule,
  loss, DSA augmentation and, for texture sets, random toroidal crops. Baselines get the DC protocol;
  MTT sets carry their learned lr and DSA strategy; label-distillation sets carry the paper's retraining
  (Adam, its base batch and its estimated number of steps).
- ``Replay``: Dataset Distillation's own recipe: replay the set's step order with its learned per-step lrs
  (plain SGD) from its init regime (the stored init for fixed-init sets, fresh or pretrained inits otherwise).
- ``KernelRidge``: no network at all: kernel ridge regression with an infinitely wide network's kernel (KIP, LS).
- ``Teacher``: the teacher-era recipe (SRe2L, RDED; FKD-style relabelling): the student trains on augmented
  views of the set (random resized crops, flips where the dataset allows them, CutMix) against a trained
  teacher's softened outputs on the same view, KL divergence, AdamW with a cosine schedule. The teacher is part
  of the recipe: it travels with the set (``SyntheticSet.teacher``) or is given to ``evaluate`` (``teacher=``),
  which can train *any* set this way, random real images included, so comparisons stay like for like.

``evaluate`` reads the recipe of the set; it never looks at the method that made it. The command-line
options of ``distilset evaluate`` are the fields of ``Standard`` (generated, like the methods' options).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from distilset.config import Config
from distilset.errors import ConfigError, DistilsetError, SynsetFormatError

INIT_REGIMES = ("fixed", "random", "fixed-pretrained", "random-pretrained")


MAX_EPOCHS, MAX_STEPS, MAX_BATCH = 100_000, 100_000_000, 1_000_000
"""Upper bounds of a recipe's length and batch (far above any paper's), so a damaged or hostile stored recipe
cannot start a run of years."""


@dataclass(frozen=True)
class Standard(Config):
    """Minibatch training of a fresh network on the set; defaults are DC's evaluation protocol."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """Optimiser of the fresh network (Adam and AdamW ignore `momentum`; AdamW decays weight matrices only)."""
    lr: float = 0.01
    """Learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """Weight decay (L2, as the optimiser applies it)."""
    batch_size: int = 256
    """Minibatch size (at most the set's size)."""
    epochs: int | None = None
    """Passes over the set (default 300, or 1000 with DSA as in DC); ignored when `steps` is set."""
    steps: int | None = None
    """Train for this many minibatch steps instead of a number of epochs."""
    schedule: Literal["step", "constant", "cosine"] = "step"
    """Learning-rate schedule: step (x0.1 at half of the training, DC), constant, or cosine (after `warmup`
    linear warm-up steps, a cosine decay to 1 % of the lr at the end: FRePo's evaluation)."""
    warmup: int = 0
    """Linear warm-up steps of the cosine schedule (from 0 to the lr)."""
    loss: Literal["ce", "mse"] = "ce"
    """Loss on the labels: cross-entropy (soft labels allowed) or MSE on centred labels (KIP, FRePo)."""
    dsa: str | None = None
    """DSA strategy applied per image while training (e.g. color_crop_cutout_flip_scale_rotate), or none."""
    crop: tuple[int, int] | None = None
    """Texture sets: train on random toroidal crops of this size (height width) of each canvas."""

    kind = "standard"

    def check(self) -> None:
        self.require_finite("lr", "momentum", "weight_decay")
        self.require_positive("lr", "batch_size", "epochs", "steps")
        self.require_at_least(0, "momentum", "weight_decay", "warmup")
        self.require_at_most(MAX_EPOCHS, "epochs")  # a stored recipe must not run for days unasked
        self.require_at_most(MAX_STEPS, "steps", "warmup")
        self.require_at_most(MAX_BATCH, "batch_size")
        if self.dsa is not None:
            from distilset.augment import check_strategy

            try:
                check_strategy(self.dsa)
            except DistilsetError as e:
                raise ConfigError(f"`dsa`: {e}") from e
        if self.crop is not None and min(self.crop) < 1:
            raise ConfigError(f"`crop` must be positive sizes, got {self.crop}")

    @property
    def total_epochs(self) -> int:
        """Epochs when no step budget is set: the explicit value, else 300 (1000 with DSA)."""
        if self.epochs is not None:
            return self.epochs
        return 1000 if self.dsa else 300

    def describe(self) -> str:
        length = f"{self.steps} steps" if self.steps else f"{self.total_epochs} epochs"
        extra = f", DSA {self.dsa}" if self.dsa else ""
        warmup = f" after {self.warmup} warm-up steps" if self.schedule == "cosine" and self.warmup else ""
        loss = ", MSE" if self.loss == "mse" else ""
        return (
            f"{self.optimizer} lr {self.lr:g}, batch {self.batch_size}, {length}, {self.schedule} schedule"
            f"{warmup}{loss}{extra}"
        )


@dataclass(frozen=True)
class Replay(Config):
    """Replay the set's step order with its learned per-step lrs (plain SGD), as Dataset Distillation trains."""

    init: Literal["fixed", "random", "fixed-pretrained", "random-pretrained"] = "random"
    """Where the replay starts: the stored init (fixed), fresh inits (random) or pretrained nets."""

    kind = "replay"

    def describe(self) -> str:
        return f"replay of the learned steps from {self.init} init"


@dataclass(frozen=True)
class KernelRidge(Config):
    """No training: kernel ridge regression on the set with an infinitely wide network's kernel (KIP, LS)."""

    arch: Literal["fc", "conv", "convnet"] = "convnet"
    """The network description (``distilset.kernels.ARCHITECTURES``): dense, convolutions, or pooled ConvNet."""
    depth: int = 3
    """Hidden layers (convolutions for conv / convnet)."""
    kernel: Literal["ntk", "nngp"] = "ntk"
    """Which infinite-width kernel."""
    reg: float = 1e-6
    """Ridge, relative to the mean diagonal of the support kernel."""

    kind = "kernel"

    def check(self) -> None:
        self.require_positive("depth")
        self.require_at_most(32, "depth")
        if not math.isfinite(self.reg) or self.reg < 0:
            raise ConfigError(f"`reg` must be a finite number >= 0, got {self.reg}")

    def describe(self) -> str:
        return f"kernel ridge regression, {self.kernel} of an infinite {self.arch}-{self.depth}, ridge {self.reg:g}"


KIP_TRANSFER = Standard(
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=100, steps=5000, schedule="cosine", loss="mse"
)
"""How finite networks train on a kernel set (``protocol="standard"`` for KIP and LS): KIP's released finite-net
transfer (Nguyen et al. 2021, google-research ``kip/``): SGD with momentum 0.9, batch 100, 5000 steps, a cosine
schedule, mean squared error on the set's regression targets. The notebooks do not state the learning rate; 0.01
was the best of 0.01 / 0.03 / 0.1 for a digits KIP set on its MLP and within a quarter point of the best for its
random real twin (``benchmarks/kip_transfer.py``)."""


@dataclass(frozen=True)
class Teacher(Config):
    """Knowledge distillation from a teacher on augmented views of the set (SRe2L / RDED's evaluation).

    Every minibatch (``augment.draw_view``): RDED's patch shuffle (for stitched images), a random resized crop of
    each image back to its size, a random flip per image (when ``flip``), CutMix on the batch (when drawn with
    probability ``cutmix``); the teacher (eval mode, no gradient) labels that view; the student is trained on
    KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch, without the T^2 factor (both
    released codes leave it out; AdamW does not see the scale). The set's own labels are not used.

    Defaults are the released codes' (SRe2L ``train_FKD.py``, RDED ``validation/main.py``): AdamW lr 1e-3, weight
    decay 0.01 on weight matrices and kernels only, 300 epochs, T 20, CutMix with Beta(1, 1) on every batch, RDED's
    batch rule (``teacher_batch``). Named deviations: the cosine decays per step to 1 % of the lr (SRe2L: per
    epoch to 0; RDED: a quarter cosine to half the lr); the crops take (0.5, 1) of the area by default, RDED's
    range for its stitched images (SRe2L's ImageNet range, (0.08, 1), leaves a few pixels of a 28x28 digit)."""

    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    """Optimiser of the student (AdamW: weight decay on weights of 2 or more dimensions only, as both codes do)."""
    lr: float = 1e-3
    """Learning rate."""
    momentum: float = 0.9
    """SGD momentum (AdamW ignores it)."""
    weight_decay: float = 0.01
    """Weight decay (decoupled, AdamW), on weights of 2 or more dimensions only."""
    batch_size: int = 50
    """Minibatch size (at most the set's size); ``teacher_batch`` gives RDED's rule for a set."""
    epochs: int = 300
    """Passes over the set; ignored when `steps` is set."""
    steps: int | None = None
    """Train for this many minibatch steps instead of a number of epochs."""
    warmup: int = 0
    """Linear warm-up steps before the cosine decay."""
    temperature: float = 20.0
    """Softmax temperature of teacher and student outputs in the KL loss (both codes: 20 with CutMix)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Area share range of the random resized crop of each image (aspect ratio 3/4 to 4/3), resized back."""
    flip: bool = True
    """Mirror each image left-right with probability 1/2 (off for digits, whose meaning mirroring changes)."""
    cutmix: float = 1.0
    """Probability that a batch gets CutMix (a box from another image of the batch, Beta(1, 1) area); 0: never."""
    patches: int = 1
    """RDED's patch shuffle before the crop: permute this many strips of columns, then of rows (its factor)."""

    kind = "teacher"
    schedule = "cosine"

    @property
    def total_epochs(self) -> int:
        return self.epochs

    def check(self) -> None:
        self.require_finite("lr", "momentum", "weight_decay", "temperature", "cutmix")
        self.require_positive("lr", "batch_size", "epochs", "steps", "temperature", "patches")
        self.require_at_least(0, "momentum", "weight_decay", "warmup")
        self.require_at_most(MAX_EPOCHS, "epochs")
        self.require_at_most(MAX_STEPS, "steps", "warmup")
        self.require_at_most(MAX_BATCH, "batch_size")
        self.require_at_most(64, "patches")
        low, high = self.crop_scale
        if not (0 < low <= high <= 1):
            raise ConfigError(f"`crop_scale` must be two area shares 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 <= self.cutmix <= 1:
            raise ConfigError(f"`cutmix` is a probability from 0 to 1, got {self.cutmix}")

    def describe(self) -> str:
        length = f"{self.steps} steps" if self.steps else f"{self.epochs} epochs"
        extra = f", CutMix p {self.cutmix:g}" if self.cutmix else ""
        flip = ", flip" if self.flip else ""
        return (
            f"teacher soft labels (KL, T {self.temperature:g}) on crops {self.crop_scale[0]:g}-"
            f"{self.crop_scale[1]:g}{flip}{extra}; {self.optimizer} lr {self.lr:g}, batch {self.batch_size}, "
            f"{length}, cosine"
        )


def teacher_batch(set_size: int, num_classes: int) -> int:
    """RDED's student batch for a set (``--re-batch-size`` 0): 10 / 50 / 100 at 1 / up to 10 / more images per
    class, doubled for 100 or 1000 classes (its CIFAR-100 and ImageNet-1k), at most the set's size."""
    ipc = max(1, set_size // num_classes)
    batch = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    if num_classes in (100, 1000):
        batch *= 2
    return min(batch, set_size)


def teacher_recipe(set_size: int, num_classes: int, flip: bool, **fields) -> Teacher:
    """The teacher recipe for a set of ``set_size`` items: RDED's batch rule, flips where the dataset allows them,
    then ``fields`` (any ``Teacher`` field) over that."""
    return Teacher(**{"batch_size": teacher_batch(set_size, num_classes), "flip": flip, **fields})


Recipe = Standard | Replay | KernelRidge | Teacher
KINDS: dict[str, type[Config]] = {"standard": Standard, "replay": Replay, "kernel": KernelRidge, "teacher": Teacher}


def recipe_to_json(recipe: Recipe) -> dict:
    return {"kind": recipe.kind, **recipe.to_json()}


def recipe_from_json(obj: dict) -> Recipe:
    """The recipe stored in ``obj``; every field is type- and range-checked by the recipe's config class."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) or obj["kind"] not in KINDS:
        shown = repr(obj) if len(repr(obj)) <= 80 else repr(obj)[:77] + "..."
        raise SynsetFormatError(f"unknown training recipe {shown}; expected kind {', '.join(KINDS)}")
    body = {k: v for k, v in obj.items() if k != "kind"}
    unknown = set(body) - {f.name for f in dataclasses.fields(KINDS[obj["kind"]])}
    if unknown:
        raise SynsetFormatError(f"the training recipe has unknown fields {sorted(unknown)}; upgrade distilset")
    try:
        return KINDS[obj["kind"]](**body)
    except DistilsetError as e:  # a ConfigError, or an unknown DSA op from augment.check_strategy
        raise SynsetFormatError(f"the set's training recipe is invalid: {e}") from e
