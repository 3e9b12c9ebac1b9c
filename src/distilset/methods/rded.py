"""RDED: realistic and diverse crops of real images, chosen by a teacher (Sun et al., CVPR 2024).

Read beside the paper's Section 3 and its released ``synthesize/main.py`` and ``synthesize/utils.py``. One class
per iteration (so a run shows progress per class and resumes between classes):

1. Sample ``candidates`` real training images of the class (all of a smaller class), and ``crops`` random square
   crops of each (area share ``crop_scale``, RandomResizedCrop with ratio 1), each resized (bilinear, antialiased)
   to a patch of 1 / ``factor`` of the image side.
2. Score every patch by the teacher ("observer", eval mode) on its class: the cross-entropy of the patch placed
   in the centre of an otherwise zero (mean-valued) image of full size; lower is more realistic for the class.
3. Keep each candidate's best patch, sort those, and keep the best ``ipc * factor**2`` of the class.
4. Stitch ``factor`` x ``factor`` kept patches into each synthetic image, row-major: slot k of image i holds the
   patch ranked ``k * ipc + i``.

The set carries the teacher and the teacher recipe (``recipes.Teacher``): students train on its soft labels of
augmented views, relabelled per batch as the released code does (so each region of a stitched image gets the
teacher's label of whatever the view shows; nothing is stored per region). Each image's patches are recorded in
``extra["patches"]``: [training index, top, left, height, width] of the crop behind every slot.

Defaults are the released scripts' (300 candidates, 5 crops each, crop areas 0.08-1; ``factor`` 2 on ImageNet-
sized inputs, 1 on CIFAR and Tiny-ImageNet); ``ipc`` 10. Patches are resized with antialiased bilinear
interpolation, as the released ``RandomResizedCrop(..., antialias=True)``. Deviations, named: at ``factor`` 1 the
student recipe keeps the
teacher recipe's default crop range (0.5-1) where RDED's range, 1 / factor to 1, would crop nothing, so the set's
recipe is the one every other set gets under the teacher protocol; the images are kept as floats (the released
code stores JPEGs); the seed of the run governs the sampling (the released synthesis is unseeded).

Scale: the scoring is the expensive part at scale (candidates x crops teacher passes); with ``ray`` each class's
patches are scored in shards as Ray tasks (``distilset.jobs``), with the same scores as in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distilset.augment import random_boxes
from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.jobs import run_jobs
from distilset.methods.base import Context, Distiller, MethodConfig, TeacherOption, prepare_teacher
from distilset.methods.registry import Preset, register_method
from distilset.recipes import teacher_recipe
from distilset.synset import SyntheticSet
from distilset.teachers import TeacherNet

SHARD = 512
"""Patches per scoring task."""


@dataclass(frozen=True)
class RDEDConfig(MethodConfig, TeacherOption):
    """RDED: the teacher's most confident crops of real images, stitched into images (Sun et al. 2024)."""

    ipc: int = 10
    """Synthetic images per class."""
    candidates: int = 300
    """Real training images sampled per class (all of a smaller class)."""
    crops: int = 5
    """Random crops scored per candidate image."""
    factor: int | None = auto("2 on inputs of 128 px or more (RDED's ImageNet setting), else 1 (its CIFAR setting)")
    """Patches per side of each image (factor x factor crops stitched; 1: each image one crop)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Area share range of the square crops."""

    ITERATIONS: ClassVar[int] = 10
    ITERATIONS_HELP: ClassVar[str] = "one per class of the dataset (the only budget RDED takes)"

    def check(self) -> None:
        self.require_at_least(1, "ipc", "candidates", "crops", "factor")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"`crop_scale` must be two area shares 0 < low <= high <= 1, got {self.crop_scale}")

    def default_iterations(self, data: Dataset) -> int:
        return data.num_classes

    def check_iterations(self, iterations: int, data: Dataset) -> None:
        if iterations != data.num_classes:
            raise ConfigError(
                f"RDED selects one class per iteration: `iterations` must be {data.num_classes}, the "
                f"classes of {data.info.name} (the default), got {iterations}"
            )

    def resolve(self, data: Dataset) -> tuple[RDEDConfig, dict[str, str]]:
        if len(data.image_shape) != 3 or data.token_embedding is not None:
            raise ConfigError(f"RDED crops images (C, H, W); {data.info.name} has inputs of {data.image_shape}")
        side = min(data.image_shape[1:])
        cfg, notes = self.fill(
            factor=(2, f"{side} px inputs, ImageNet-like")
            if side >= 128
            else (1, f"{side} px inputs: RDED's CIFAR setting")
        )
        h, w = data.image_shape[1:]
        if h % cfg.factor or w % cfg.factor:
            raise ConfigError(f"`factor` {cfg.factor} must divide the image size {h}x{w} (patches of equal size)")
        need = cfg.ipc * cfg.factor**2
        data.require_per_class(need, "`ipc` x `factor`^2")
        if cfg.candidates < need:
            raise ConfigError(
                f"`candidates` {cfg.candidates} must be at least `ipc` x `factor`^2 = {need}: each "
                "candidate image gives at most one patch"
            )
        return cfg, notes


@torch.no_grad()
def score_patches(net: nn.Module, patches: torch.Tensor, label: int, size: tuple[int, int]) -> torch.Tensor:
    """The teacher's cross-entropy on class ``label`` for each patch, placed in the centre of a zero image of
    ``size`` (the normalised space's mean, as the released code pads)."""
    ph, pw = patches.shape[2:]
    top, left = (size[0] - ph) // 2, (size[1] - pw) // 2
    x = F.pad(patches, (left, size[1] - pw - left, top, size[0] - ph - top))
    net.eval()
    logits = net(x)
    return F.cross_entropy(logits, torch.full((len(x),), label, device=x.device), reduction="none")


def cut_patch(image: torch.Tensor, box: list[int], size: tuple[int, int]) -> torch.Tensor:
    """The crop ``box`` (top, left, height, width) of ``image`` (C, H, W) resized to ``size`` (bilinear,
    antialiased): one patch."""
    top, left, h, w = box
    crop = image[None, :, top : top + h, left : left + w]
    return F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)[0]


class RDED(Distiller):
    """Stepwise RDED, one class per iteration (``distilset.methods.runner`` drives it); ``teacher``: the one the
    ``prepare`` hook trained or read."""

    def __init__(self, data: Dataset, cfg: RDEDConfig, ctx: Context | None = None, *, teacher: TeacherNet):
        super().__init__(data, cfg, ctx)
        cfg = self.cfg  # resolved
        self.teacher, self.ray = teacher, self.ctx.ray
        teacher.check_data(data)
        self.net = teacher.module.to(self.device).eval().requires_grad_(False)
        k, f = data.num_classes, cfg.factor
        self.images = torch.zeros(k * cfg.ipc, *data.image_shape)
        self.labels = torch.arange(k).repeat_interleave(cfg.ipc)
        self.patches = torch.full((k * cfg.ipc, f * f, 5), -1, dtype=torch.int64)
        self.patch_size = (data.image_shape[1] // f, data.image_shape[2] // f)
        self.selection: dict[int, dict[str, torch.Tensor]] = {}
        """Per class scored this session: candidates (n,), boxes (n, crops, 4), scores (n, crops), kept (ipc f^2,)."""

    def outer_step(self, iteration: int) -> dict[str, float]:
        """Select and stitch the patches of class ``iteration``."""
        c, cfg, g = iteration, self.cfg, self.generator
        members = self.data.class_indices(c).cpu()
        candidates = members[torch.randperm(len(members), generator=g)[: cfg.candidates]]
        n, m = len(candidates), cfg.crops
        h, w = self.data.image_shape[1:]
        boxes = random_boxes(n * m, (h, w), cfg.crop_scale, g, ratio=(1.0, 1.0)).long()
        source = self.data.train_x[candidates.to(self.data.train_x.device)].cpu()
        patches = torch.stack([cut_patch(source[i // m], boxes[i].tolist(), self.patch_size) for i in range(n * m)])
        shards = [(self.net, patches[i : i + SHARD].to(self.device), c, (h, w)) for i in range(0, n * m, SHARD)]
        scores = torch.cat([s.cpu() for s in run_jobs(score_patches, shards, ray=self.ray)]).view(n, m)
        best, which = scores.min(1)  # each candidate's best crop
        need = cfg.ipc * cfg.factor**2
        order = torch.sort(best, stable=True).indices[:need]  # then the best candidates of the class
        f, ph, pw = cfg.factor, *self.patch_size
        for rank, cand in enumerate(order.tolist()):
            slot, i = divmod(rank, cfg.ipc)
            row, col = divmod(slot, f)
            box = boxes[cand * m + int(which[cand])]
            item = c * cfg.ipc + i
            self.images[item, :, row * ph : (row + 1) * ph, col * pw : (col + 1) * pw] = patches[cand * m + which[cand]]
            self.patches[item, slot] = torch.tensor([int(candidates[cand]), *box.tolist()])
        self.selection[c] = {"candidates": candidates, "boxes": boxes.view(n, m, 4), "scores": scores, "kept": order}
        return {"loss": float(best[order].mean()), "worst_kept": float(best[order].max())}

    def quick_eval(self, validation: Dataset) -> dict[str, float]:
        """``--eval-every``: the validation accuracy once every class is selected (a partial set has none)."""
        if (self.patches[:, :, 0] < 0).any():
            return {}
        return super().quick_eval(validation)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.clone(), "patches": self.patches.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images.copy_(state["images"])
        self.patches.copy_(state["patches"])
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        """The stitched images with their classes, the teacher and the teacher recipe (RDED's patch shuffle and
        crop range at factor > 1); the student net defaults to the teacher's architecture."""
        if (self.patches[:, :, 0] < 0).any():
            missing = sorted({int(c) for c in self.labels[(self.patches[:, :, 0] < 0).any(1)]})
            raise ConfigError(
                f"RDED has not selected classes {missing[:5]} yet; run all {self.data.num_classes} iterations"
            )
        t, f = self.teacher, self.cfg.factor
        extra_recipe = {"patches": f, "crop_scale": (1 / f, 1.0)} if f > 1 else {}
        return SyntheticSet.for_dataset(
            self.data,
            images=self.images.clone(),
            labels=self.labels.clone(),
            method="rded",
            recipe=teacher_recipe(len(self.labels), self.data.num_classes, self.data.flips, **extra_recipe),
            net={"name": t.net, "kwargs": dict(t.kwargs), "init": "default"},
            teacher=t,
            extra={"teacher_test_accuracy": t.test_accuracy, "patches": self.patches.tolist()},
        )


register_method(
    "rded",
    RDEDConfig,
    RDED,
    presets={
        "rded-cifar10": Preset(
            "cifar10",
            10,
            {"ipc": 10, "candidates": 300, "crops": 5, "factor": 1},
            "the released CIFAR-10 script (its teacher: Conv3 with batch norm, 82.2 %)",
        ),
    },
    prepare=prepare_teacher,
    ray=True,
)
