"""Stored views: the teacher recipe's augmented views and the teacher's soft labels of them, computed once and kept
with the set (FKD, Shen & Xing 2022; SRe2L's "relabel" stage on ImageNet), so that training a student on the set
needs no teacher forward.

``relabel(syn, teacher, top_k=...)`` walks the teacher recipe's epochs exactly as ``train.fit`` would (the
minibatch order of each epoch, each batch's patch shuffle, crop boxes, flips and CutMix box), runs the teacher on
every view and keeps its ``top_k`` softened probabilities (softmax(logits / T)); the remaining mass is spread
evenly over the other classes when the set is trained (with ``top_k`` = the number of classes, nothing is lost).
Every student trained on a relabelled set sees the same views (FKD's choice); the seed of a training then sets only
the network's initial weights.

On disk the views are ``views.safetensors`` beside the set (listed in ``synset.json`` with their epochs, top-k and
size), checked on load: shapes that fit the set and its recipe, orders that are permutations, boxes inside the
image, probabilities that are finite, non-negative and sum to at most 1, classes in range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distilset.augment import View
from distilset.errors import DistilsetError, SynsetFormatError
from distilset.files import VIEWS_FILE
from distilset.progress import Progress
from distilset.recipes import Teacher

NAMES = ("order", "cols", "rows", "boxes", "flips", "mix_box", "mix_from", "probs", "classes")


@dataclass(frozen=True)
class StoredViews(View):
    """E epochs of views (the fields of ``augment.View``, stacked) of a set of N items in batches of B (nb batches per
    epoch, the last one possibly smaller): ``order`` (E, N) the items in the order of the epoch's minibatches; by
    position in that order, ``cols``/``rows`` (E, N, f) each image's patch-strip permutations, ``boxes`` (E, N, 4)
    crop boxes (whole pixels) and ``flips`` (E, N) flips; ``mix_box`` (E, nb, 4) CutMix boxes (empty: no mix) and
    ``mix_from`` (E, N) the position in its batch pasted into each image; ``probs`` and ``classes`` (E, N, k) the
    teacher's top-k softened probabilities on each view."""

    batch_size: int
    order: torch.Tensor
    probs: torch.Tensor
    classes: torch.Tensor

    @property
    def epochs(self) -> int:
        return len(self.order)

    @property
    def top_k(self) -> int:
        return self.probs.shape[2]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).contiguous() for name in NAMES}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def listing(self) -> dict[str, int]:
        """What ``synset.json`` says of the views."""
        return {"epochs": self.epochs, "top_k": self.top_k, "batch_size": self.batch_size, "bytes": self.nbytes}

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """The item indices of each minibatch of ``epoch``."""
        return list(self.order[epoch].long().split(self.batch_size))

    def view(self, epoch: int, b: int) -> View:
        """The stored random choices of batch ``b`` of ``epoch``."""
        span = slice(b * self.batch_size, (b + 1) * self.batch_size)
        return View(
            self.cols[epoch, span].long(),
            self.rows[epoch, span].long(),
            self.boxes[epoch, span].float(),
            self.flips[epoch, span].bool(),
            self.mix_box[epoch, b].long(),
            self.mix_from[epoch, span].long(),
        )

    def targets(self, epoch: int, b: int, num_classes: int) -> torch.Tensor:
        """The soft labels of batch ``b`` of ``epoch``: the stored top-k probabilities, the rest of the mass spread
        evenly over the other classes."""
        span = slice(b * self.batch_size, (b + 1) * self.batch_size)
        probs, classes = self.probs[epoch, span].float(), self.classes[epoch, span].long()
        k = probs.shape[1]
        rest = (1 - probs.sum(1, keepdim=True)).clamp_min(0) / max(num_classes - k, 1)
        return rest.expand(len(probs), num_classes).scatter(1, classes, probs)  # top-k = all classes: all replaced

    def check(self, n: int, num_classes: int, size: tuple[int, int], recipe: Teacher, where: str = "views") -> None:
        """Refuse views that do not fit a set of ``n`` items of ``size`` with ``num_classes`` classes trained by
        ``recipe`` (SynsetFormatError naming the first problem)."""
        e, bs = self.epochs, self.batch_size
        nb = -(-n // bs)
        f = recipe.patches
        integers, floats = ("order", "cols", "rows", "boxes", "flips", "mix_box", "mix_from", "classes"), ("probs",)
        for name in integers + floats:
            t = getattr(self, name)
            if t.is_floating_point() != (name in floats) or t.dtype == torch.bool:
                kind = "floating-point" if name in floats else "integer"
                raise SynsetFormatError(f"{where}: {name} must hold {kind} values, got {t.dtype}")
        want = {
            "order": (e, n),
            "cols": (e, n, f),
            "rows": (e, n, f),
            "boxes": (e, n, 4),
            "flips": (e, n),
            "mix_box": (e, nb, 4),
            "mix_from": (e, n),
        }
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                raise SynsetFormatError(
                    f"{where}: {name} has shape {tuple(getattr(self, name).shape)}, the set and its recipe need {shape}"
                )
        if self.probs.ndim != 3 or self.probs.shape[:2] != (e, n) or self.classes.shape != self.probs.shape:
            raise SynsetFormatError(f"{where}: probs and classes must both be ({e}, {n}, k)")
        if not 1 <= self.top_k <= num_classes:
            raise SynsetFormatError(f"{where}: top-k {self.top_k} must be from 1 to the {num_classes} classes")
        if bs != min(recipe.batch_size, n):
            raise SynsetFormatError(f"{where}: batches of {bs}, the recipe trains in batches of {recipe.batch_size}")
        steps = recipe.steps or recipe.epochs * nb
        if e != math.ceil(steps / nb):
            raise SynsetFormatError(f"{where}: {e} epochs stored, the recipe trains {math.ceil(steps / nb)}")
        if not torch.equal(self.order.long().sort(1).values, torch.arange(n).expand(e, n)):
            raise SynsetFormatError(f"{where}: each epoch's order must be a permutation of the {n} items")
        for name in ("cols", "rows"):
            if f > 1 and not torch.equal(getattr(self, name).long().sort(2).values, torch.arange(f).expand(e, n, f)):
                raise SynsetFormatError(f"{where}: {name} must be permutations of the {f} strips")
        h, w = size
        b = self.boxes.float()
        if (
            not torch.isfinite(b).all()
            or (b[..., :2] < 0).any()
            or (b[..., 2:] < 1).any()
            or (b[..., 0] + b[..., 2] > h).any()
            or (b[..., 1] + b[..., 3] > w).any()
        ):
            raise SynsetFormatError(f"{where}: crop boxes must lie inside the {h}x{w} images")
        m = self.mix_box
        if (m < 0).any() or (m[..., :2] > h).any() or (m[..., 2:] > w).any():
            raise SynsetFormatError(f"{where}: CutMix boxes must lie inside the {h}x{w} images")
        sizes = torch.full((n,), bs).index_fill_(0, torch.arange((nb - 1) * bs, n), n - (nb - 1) * bs)
        if (self.mix_from < 0).any() or (self.mix_from >= sizes).any():
            raise SynsetFormatError(
                f"{where}: mix_from must be positions in its batch ({bs} items, the last {n - (nb - 1) * bs})"
            )
        p = self.probs.float()
        if not torch.isfinite(p).all() or (p < 0).any() or (p.sum(2) > 1 + 1e-2).any():
            raise SynsetFormatError(f"{where}: probs must be finite, non-negative, at most 1 in all per view")
        if (self.classes < 0).any() or (self.classes >= num_classes).any():
            raise SynsetFormatError(f"{where}: classes must lie in [0, {num_classes})")
        ranked = self.classes.sort(2).values
        if self.top_k > 1 and (ranked[..., 1:] == ranked[..., :-1]).any():
            raise SynsetFormatError(f"{where}: the top-k classes of a view must differ")


def relabel(
    syn,
    teacher=None,
    recipe: Teacher | None = None,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
):
    """The set with stored views (module docstring): ``teacher`` (default: the set's own) labels every view the
    teacher recipe (default: the set's own) draws from ``seed``; the set returned carries that recipe, the teacher
    and the views. ``top_k``: probabilities kept per view (default: all classes up to 100, else 100)."""
    import dataclasses

    from distilset.teachers import TeacherNet, load_teacher
    from distilset.train import Shuffle, teacher_views

    teacher = teacher if teacher is None or isinstance(teacher, TeacherNet) else load_teacher(teacher, device)
    teacher = teacher or syn.teacher
    recipe = recipe or (syn.recipe if isinstance(syn.recipe, Teacher) else None)
    if teacher is None:
        raise DistilsetError(
            "relabelling needs a teacher and the set carries none: give `teacher`, a directory made "
            "by `distilset teacher`"
        )
    if recipe is None:
        raise DistilsetError("the set has no teacher recipe: give the one to store views of (`recipe=`)")
    if syn.images.ndim != 4:
        raise DistilsetError("relabelling stores views of images (N, C, H, W); this set holds embeddings")
    k = syn.num_classes
    top_k = min(k, 100) if top_k is None else top_k
    if not 1 <= top_k <= k:
        raise DistilsetError(f"`top_k` must be from 1 to the {k} classes, got {top_k}")
    teacher.check_fits(syn.image_shape, k, syn.norm, syn.zca is not None, syn.dataset)
    n, size = len(syn), tuple(syn.image_shape[1:])
    plan = Shuffle(n, recipe.batch_size)
    nb = plan.per_epoch
    epochs = math.ceil((recipe.steps or recipe.epochs * nb) / nb)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in NAMES}
    x = syn.images.to(device)
    net = teacher.module.to(device).eval()
    bar = Progress(epochs, "relabel", progress)
    from distilset.augment import apply_view

    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        rows = {name: [] for name in NAMES if name != "order"}
        for idx in order.split(min(recipe.batch_size, n)):
            view = teacher_views(recipe, len(idx), size, g)
            with torch.no_grad():
                probs = torch.softmax(net(apply_view(x[idx.to(device)], view)) / recipe.temperature, 1).cpu()
            top = probs.topk(top_k, dim=1)
            for name, value in (
                ("cols", view.cols),
                ("rows", view.rows),
                ("boxes", view.boxes),
                ("flips", view.flips),
                ("mix_box", view.mix_box),
                ("mix_from", view.mix_from),
                ("probs", top.values),
                ("classes", top.indices),
            ):
                rows[name].append(value)
        parts["order"].append(order)
        parts["mix_box"].append(torch.stack(rows["mix_box"]))
        for name in ("cols", "rows", "boxes", "flips", "mix_from", "probs", "classes"):
            parts[name].append(torch.cat(rows[name]))
        bar.update()
    bar.close()
    stacked = {name: torch.stack(v).to(_dtype(name, n, k, recipe.patches)) for name, v in parts.items()}
    views = StoredViews(batch_size=min(recipe.batch_size, n), **stacked)
    return dataclasses.replace(syn, recipe=recipe, teacher=teacher, views=views)


def _dtype(name: str, n: int, num_classes: int, patches: int) -> torch.dtype:
    """The smallest dtype each stored tensor needs (boxes are whole pixels; soft labels in half precision)."""
    if name == "probs":
        return torch.float16
    if name in ("cols", "rows", "flips"):
        return torch.uint8 if patches < 256 else torch.int16
    bound = {"order": n, "mix_from": n, "classes": num_classes}.get(name, 1 << 15)  # boxes, mix_box: pixels
    return torch.int16 if bound < 1 << 15 else torch.int32


__all__ = ["VIEWS_FILE", "StoredViews", "relabel"]
