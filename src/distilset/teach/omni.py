"""Data distillation for omni-supervised learning (Radosavovic, Dollar, Girshick, Gkioxari, He; CVPR 2018).

Read beside the paper's section 3 ("Data distillation"), in its classification reading:

1. A labelled share A of the training images (``labelled`` of every class) keeps its labels; the rest, B,
   loses them. A **teacher** is trained on A.
2. **Multi-transform inference**: the teacher classifies every image of B under several geometric transforms
   (the paper: horizontal flips and scales; here shifts by ``shift`` pixels in four directions, the ``scales``,
   and the horizontal flip when the dataset's augmentation allows one, never for digits). A class label does
   not move with the image, so "mapping the predictions back" is the identity, and the ensemble is the mean
   of the class probabilities.
3. **Pseudo-labels**: the ensemble's top class, kept when its probability reaches ``threshold``. The paper
   picks the threshold so that the pseudo-labelled data carry as many annotations per image as the labelled
   data; in classification every image carries exactly one, so that rule would keep everything. distilset's
   rule (the ``threshold`` default): keep the share of B that the teacher itself expects to get right, its mean
   ensemble confidence on B, taking the most confident images first.
4. A **student** is re-initialised (a new seed) and trained on A and the pseudo-labelled images with every
   minibatch mixing real and pseudo labels in the ratio ``real_share`` (the paper: about 6:4), on a longer
   schedule than the teacher's (``student_steps``: 3x).

With ``baselines`` the run also trains the comparisons the claims need, on the student's schedule: a student on
**single-view** pseudo-labels (the untransformed image only, same threshold rule), a **model-distillation**
student on the teacher's soft single-view predictions for all of B (Hinton-style soft targets, no threshold),
and a **long teacher**: the teacher's training on A for as many steps as a student, so that "the student beats
its teacher" is not just the longer schedule.

Outputs: ``models/teacher``, ``models/student`` (and ``student-single-view``, ``student-soft``);
``labels.safetensors`` with ``labelled_index`` (A, indices into the training split), ``unlabelled_index`` (B),
``pseudo_label`` and ``confidence`` (ensemble) per image of B, ``kept`` (1 where the pseudo-label was used);
``report.json``; ``teach.png``: test-accuracy curves of teacher and students, and pseudo-label accuracy
against the share kept for the ensemble and a single view.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.methods.base import Context
from distilset.teach.base import (
    Model,
    OneNet,
    Taught,
    TeachConfig,
    check_share,
    claim,
    predict,
    register_system,
    split_per_class,
    test_accuracy,
    train,
)
from distilset.train import MixedBatches


@dataclass(frozen=True)
class OmniConfig(OneNet, TeachConfig):
    """Data distillation for omni-supervised learning (Radosavovic et al. 2018): a teacher's multi-transform
    pseudo-labels on unlabelled images train a fresh student."""

    labelled: float = 0.05
    """Share of each class's training images that keep their labels (A); the others (B) are unlabelled."""
    shift: int | None = auto("1 pixel per 14 of the image side, at least 1")
    """Pixels of the four shifted views (up, down, left, right) of the multi-transform inference."""
    scales: tuple[float, ...] = (0.9, 1.1)
    """Zoom factors of the scaled views (1 is the untransformed view, always included)."""
    flip: bool | None = auto("when the dataset's augmentation allows flips (not digits)")
    """Add the horizontally flipped view."""
    threshold: float | None = auto("keep the share of B the teacher expects to get right")
    """Keep a pseudo-label when the ensemble's top probability reaches this."""
    real_share: float = 0.6
    """Share of every student minibatch drawn from the labelled images (the paper: about 6:4)."""
    teacher_steps: int = 500
    """Minibatch steps of the teacher on the labelled images."""
    student_steps: int | None = auto("3 x `teacher_steps`: the paper's longer schedule")
    """Minibatch steps of each student."""
    baselines: bool = True
    """Also train the single-view and soft-label (model distillation) students for comparison."""

    def check(self) -> None:
        super().check()
        check_share(self, "labelled", "real_share")
        self.require_positive("shift", "teacher_steps", "student_steps")
        if any(not 0 < s <= 4 or s == 1 for s in self.scales):
            raise ConfigError(f"`scales` must be zoom factors in (0, 4] other than 1, got {list(self.scales)}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"`threshold` must be a probability in [0, 1], got {self.threshold}")

    def resolve(self, data: Dataset) -> tuple[OmniConfig, dict[str, str]]:
        side = min(data.image_shape[1:])
        flips = data.flips
        return self.fill_one_net(
            data,
            shift=(max(1, round(side / 14)), f"{side}-pixel images"),
            flip=(flips, f"{data.info.name}'s augmentation {'allows' if flips else 'has no'} flips"),
            student_steps=(3 * self.teacher_steps, f"3 x {self.teacher_steps} teacher steps"),
        )


def views(x: torch.Tensor, cfg: OmniConfig) -> list[torch.Tensor]:
    """The transformed copies of ``x`` the teacher classifies: the image, four shifts, the scales, the flip."""
    n, _, h, w = x.shape
    out = [x]

    def affine(scale: float, dx: float, dy: float) -> torch.Tensor:
        theta = torch.tensor([[1 / scale, 0, -2 * dx / w], [0, 1 / scale, -2 * dy / h]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)  # borders are background

    s = cfg.shift
    out += [affine(1, dx, dy) for dx, dy in ((s, 0), (-s, 0), (0, s), (0, -s))]
    out += [affine(scale, 0, 0) for scale in cfg.scales]
    if cfg.flip:
        out.append(x.flip(3))
    return out


def pseudo_labels(teacher: Model, x: torch.Tensor, cfg: OmniConfig, multi: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, confidence) per image: the top class of the mean probabilities over the views (or the image)."""
    chunks = [x[i : i + 4096] for i in range(0, len(x), 4096)]  # the views of a few thousand images at a time
    probs = torch.cat(
        [torch.stack([predict(teacher, v) for v in (views(c, cfg) if multi else [c])]).mean(0) for c in chunks]
    )
    confidence, label = probs.max(1)
    return label, confidence


def keep_rule(confidence: torch.Tensor, threshold: float | None) -> tuple[torch.Tensor, float]:
    """(mask of kept pseudo-labels, threshold): the given threshold, or the one that keeps the most confident
    share of B equal to the mean confidence (the teacher's own estimate of its accuracy on B)."""
    if threshold is None:
        share = float(confidence.mean())
        threshold = float(torch.quantile(confidence.float(), 1 - share))
    return confidence >= threshold, threshold


def coverage(label: torch.Tensor, confidence: torch.Tensor, truth: torch.Tensor) -> list[tuple[float, float]]:
    """Pseudo-label accuracy of the most confident images against the share kept: [(share, accuracy)]."""
    order = confidence.argsort(descending=True)
    right = (label[order] == truth[order]).float().cumsum(0)
    n = len(order)
    return [(k / n, float(right[k - 1]) / k) for k in sorted({max(1, round(q * n / 20)) for q in range(1, 21)})]


def run_omni(data: Dataset, cfg: OmniConfig, ctx: Context) -> Taught:
    g = torch.Generator().manual_seed(ctx.seed)
    a_idx, b_idx = split_per_class(data, cfg.labelled, g, what="`labelled`")
    a_idx, b_idx = a_idx.to(data.train_x.device), b_idx.to(data.train_x.device)
    xa, ya, xb, truth_b = data.train_x[a_idx], data.train_y[a_idx], data.train_x[b_idx], data.train_y[b_idx]
    shape, k = data.image_shape, data.num_classes
    fresh = lambda offset: Model.fresh(cfg.net, cfg.net_kwargs, shape, k, seed=ctx.seed + offset, device=ctx.device)  # noqa: E731
    ctx.log(f"  A: {len(xa)} labelled images, B: {len(xb)} unlabelled")

    teacher = fresh(0)
    curves = {
        "teacher": train(
            teacher,
            xa,
            ya,
            cfg.recipe(cfg.teacher_steps),
            seed=ctx.seed,
            test=data,
            progress=ctx.progress,
            desc="omni: teacher",
        )
    }
    ctx.log(f"  teacher: {100 * curves['teacher'][-1][1]:.2f} % test accuracy")

    def student(name: str, labels: torch.Tensor, kept: torch.Tensor, offset: int) -> tuple[Model, float]:
        x = torch.cat([xa, xb[kept]])
        y = torch.cat([F.one_hot(ya, k).float(), labels[kept]]) if labels.ndim == 2 else torch.cat([ya, labels[kept]])
        plan = MixedBatches(len(xa), int(kept.sum()), cfg.batch_size, cfg.real_share)
        model = fresh(offset)
        curves[name] = train(
            model,
            x,
            y,
            cfg.recipe(cfg.student_steps),
            seed=ctx.seed + offset,
            test=data,
            batches=plan,
            progress=ctx.progress,
            desc=f"omni: {name}",
        )
        ctx.log(f"  {name}: {100 * curves[name][-1][1]:.2f} % test accuracy")
        return model, curves[name][-1][1]

    label, conf = pseudo_labels(teacher, xb, cfg, multi=True)
    kept, threshold = keep_rule(conf, cfg.threshold)
    if not bool(kept.any()):
        raise ConfigError(f"`threshold` {threshold:g} keeps no pseudo-label (top confidence {float(conf.max()):.3f})")
    models = {"teacher": teacher}
    models["student"], acc_student = student("student", label, kept, 1)
    acc_teacher = test_accuracy(teacher, data)
    pseudo = {
        "kept": int(kept.sum()),
        "of": len(xb),
        "threshold": threshold,
        "accuracy_kept": float((label[kept] == truth_b[kept]).float().mean()),
        "accuracy_all": float((label == truth_b).float().mean()),
    }
    report: dict[str, Any] = {
        "labelled": len(xa),
        "unlabelled": len(xb),
        "views": len(views(xa[:1], cfg)),
        "teacher_accuracy": acc_teacher,
        "student_accuracy": acc_student,
        "pseudo_labels": pseudo,
    }
    claims = [
        claim(
            "the student beats its teacher", acc_student > acc_teacher, {"student": acc_student, "teacher": acc_teacher}
        )
    ]
    cover = {"multi-transform": coverage(label, conf, truth_b)}
    if cfg.baselines:
        label1, conf1 = pseudo_labels(teacher, xb, cfg, multi=False)
        kept1, threshold1 = keep_rule(conf1, cfg.threshold)
        if not bool(kept1.any()):
            raise ConfigError(
                f"`threshold` {threshold1:g} keeps no single-view pseudo-label (top confidence "
                f"{float(conf1.max()):.3f})"
            )
        cover["single view"] = coverage(label1, conf1, truth_b)
        models["student-single-view"], acc_single = student("student-single-view", label1, kept1, 2)
        soft = predict(teacher, xb)
        models["student-soft"], acc_soft = student("student-soft", soft, torch.ones_like(kept), 3)
        long_teacher = fresh(4)  # the teacher on the student's schedule: is the student's gain just more steps?
        curves["teacher-long"] = train(
            long_teacher,
            xa,
            ya,
            cfg.recipe(cfg.student_steps),
            seed=ctx.seed + 4,
            test=data,
            progress=ctx.progress,
            desc="omni: teacher-long",
        )
        acc_long = curves["teacher-long"][-1][1]
        models["teacher-long"] = long_teacher
        ctx.log(f"  teacher-long: {100 * acc_long:.2f} % test accuracy")
        claims[0] = claim(
            "the student beats its teacher, also one trained as long as the student",
            acc_student > max(acc_teacher, acc_long),
            {"student": acc_student, "teacher": acc_teacher, "teacher_long": acc_long},
        )
        report.update(
            single_view_student_accuracy=acc_single,
            soft_student_accuracy=acc_soft,
            long_teacher_accuracy=acc_long,
            single_view_pseudo_labels={
                "kept": int(kept1.sum()),
                "threshold": threshold1,
                "accuracy_kept": float((label1[kept1] == truth_b[kept1]).float().mean()),
                "accuracy_all": float((label1 == truth_b).float().mean()),
            },
        )
        claims.append(
            claim(
                "multi-transform pseudo-labels train a better student than single-view ones",
                acc_student > acc_single,
                {"multi_transform": acc_student, "single_view": acc_single},
            )
        )
    report.update(curves=curves, coverage=cover, claims=claims)
    labels = {
        "labelled_index": a_idx,
        "unlabelled_index": b_idx,
        "pseudo_label": label,
        "confidence": conf,
        "kept": kept.to(torch.uint8),
    }
    return Taught(models, labels, report, picture=lambda: _picture(report, data.info.name))


def _picture(report: dict, dataset: str):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = itertools.cycle([("-", "o"), ("--", "s"), (":", "^"), ("-.", "v"), ("-", "x")])
    for name, curve in report["curves"].items():
        steps, accs = zip(*curve, strict=True)
        line, marker = next(styles)
        left.plot(steps, [100 * a for a in accs], line, color="black", marker=marker, markersize=3, label=name)
    left.set(xlabel="minibatch step", ylabel="test accuracy (%)", title=f"teacher and students, {dataset}")
    left.legend(fontsize=8)
    for (name, points), style in zip(report["coverage"].items(), ["-", "--"], strict=False):
        share, acc = zip(*points, strict=True)
        right.plot([100 * s for s in share], [100 * a for a in acc], style, color="black", label=name)
    kept = report["pseudo_labels"]
    right.axvline(100 * kept["kept"] / kept["of"], color="grey", linewidth=0.8, label="kept (threshold rule)")
    right.set(xlabel="most confident share of B (%)", ylabel="pseudo-label accuracy (%)", title="pseudo-labels")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


register_system("omni", OmniConfig, run_omni)
__all__ = ["OmniConfig", "run_omni", "views"]
