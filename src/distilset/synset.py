"""SyntheticSet: a distilled (or baseline) training set that carries everything needed to use it.

On disk a set is ``synset.safetensors`` (tensors) plus ``synset.json`` (metadata, the typed training recipe,
the resolved config of the method that made it, a listing of the tensors with shapes and dtypes, and the
format version), both written atomically; no pickle anywhere. ``load`` validates the pair and refuses
malformed files with a message naming the problem. Version 1 files (before typed recipes) are read and
converted: learned lrs become a ``Replay`` recipe, a learned ``train_lr`` / DSA strategy / texture crop a
``Standard`` one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from distilset import augment, jsonread
from distilset.data.dataset import Normalization
from distilset.data.zca import ZCA
from distilset.errors import DistilsetError, SynsetFormatError
from distilset.files import GRID, SET_META, SET_TENSORS, TILES
from distilset.io import atomic_write, write_together
from distilset.jsonread import load_json
from distilset.nets import create_net
from distilset.nets.registry import read_net_spec
from distilset.recipes import KernelRidge, Recipe, Replay, Standard, Teacher, recipe_from_json, recipe_to_json
from distilset.relabel import NAMES as VIEW_NAMES
from distilset.relabel import VIEWS_FILE, StoredViews
from distilset.teachers import TEACHER_FILE, TeacherNet, load_teacher

FORMAT = "distilset.synset"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_LEARNED_LR = 1e3
"""Largest learned per-step lr accepted (DD's learned lrs are softplus outputs near 0.01-1; 1e30 is damage)."""
LABEL_SUM_TOLERANCE = 1e-3
"""How far a soft-label row of a standard-recipe set may sum from 1 (float32 rounding over K classes)."""
TENSOR_FILE, META_FILE = SET_TENSORS, SET_META


class _SetData(torch.utils.data.Dataset):
    """``SyntheticSet.torch_dataset()``: the items and labels, each image DSA-augmented when a strategy is given."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, strategy: str | None, seed: int) -> None:
        self.images, self.labels, self.strategy = images, labels, strategy
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.strategy:
            draw = int(torch.randint(2**62, (1,), generator=self.generator))
            x = augment.dsa(x[None], self.strategy, seed=draw, siamese=False)[0]
        return x, self.labels[i]


@dataclass
class SyntheticSet:
    """Images (or embeddings), labels and the metadata that says how to train on them.

    images: float32 (N, C, H, W) in the dataset's normalised (and possibly ZCA) space.
    labels: int64 (N,) hard labels, or float32 (N, K) soft label vectors (distributions, except under Replay).
    recipe: how a fresh network must be trained on the set (``Standard`` or ``Replay``, see recipes.py).
    lrs / step_order: per-step learned learning rates (T,) and the item indices of each step (T, B), which a
    ``Replay`` recipe replays. init_params: the fixed initial weights of a fixed-init set.
    net: {"name", "kwargs", "init"} of the distillation net. config: the resolved config of the method.
    teacher: the trained network whose soft labels a ``Teacher`` recipe distils (SRe2L, RDED), saved beside the
    set as ``teacher.safetensors`` with its spec in ``synset.json`` (``distilset.teachers``). views: the teacher
    recipe's views and the teacher's soft labels of them, stored (``distilset.relabel``; ``views.safetensors``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    norm: Normalization = field(default_factory=Normalization)
    dataset: str = ""
    method: str = ""
    zca: ZCA | None = None
    recipe: Recipe = field(default_factory=Standard)
    lrs: torch.Tensor | None = None
    step_order: torch.Tensor | None = None
    init_params: dict[str, torch.Tensor] | None = None
    net: dict | None = None
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    teacher: TeacherNet | None = None
    views: StoredViews | None = None

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.validate()

    def __repr__(self) -> str:
        """One line (the tensors are summarised, not printed)."""
        labels = "soft labels" if self.labels.is_floating_point() else "hard labels"
        net = f", net {self.net['name']}" if self.net else ""
        more = "".join(f", {what}" for what, has in (("a teacher", self.teacher), ("stored views", self.views)) if has)
        return (
            f"SyntheticSet({len(self)} items of {tuple(self.image_shape)}, {self.num_classes} classes, {labels}, "
            f"method {self.method or '-'}, dataset {self.dataset or '-'}, recipe {self.recipe.kind}{net}{more})"
        )

    @classmethod
    def for_dataset(cls, data, images: torch.Tensor, labels: torch.Tensor, method: str, **fields) -> SyntheticSet:
        """A set in ``data``'s space: its class names, normalisation, name and ZCA come along."""
        info = data.info
        return cls(
            images=images,
            labels=labels,
            class_names=info.class_names,
            norm=info.norm,
            dataset=info.name,
            method=method,
            zca=data.zca,
            **fields,
        )

    # ---- shape facts -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.images)

    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    def soft_labels(self) -> torch.Tensor:
        if self.soft:
            return self.labels
        return torch.nn.functional.one_hot(self.labels, self.num_classes).float()

    def validate(self) -> None:
        """Check every tensor's dtype, shape, finiteness and range; raise SynsetFormatError naming the first problem.

        images: float32 (N, C, H, W), or embedded inputs (text: (N, D) vectors or (N, L, D) token rows), finite.
        labels: int64 (N,) class indices, or float32 (N, K) soft labels that are distributions (non-negative, rows
        summing to 1) unless the recipe replays learned steps (Dataset Distillation's learned labels enter its inner
        loss unnormalised and may be anything finite). lrs: float, finite, in [0, MAX_LEARNED_LR]. init weights:
        float32 (int64 counters), finite, the shapes of `net`.
        """
        images, labels, n = self.images, self.labels, len(self.images)
        if images.dtype != torch.float32:
            raise SynsetFormatError(
                f"images must be float32, got {images.dtype}; convert them with images.float() and save the set again"
            )
        if images.ndim not in (2, 3, 4):
            raise SynsetFormatError(
                f"images must be (N, C, H, W), or embedded inputs (N, D) / (N, L, D), got shape {tuple(images.shape)}"
            )
        if n == 0:
            raise SynsetFormatError("a synthetic set needs at least one image")
        if not torch.isfinite(images).all():
            raise SynsetFormatError("images contain NaN or inf")
        if len(self.class_names) < 2 or not all(isinstance(c, str) for c in self.class_names):
            raise SynsetFormatError(f"class_names must be 2 or more strings, got {list(self.class_names)[:12]!r}")
        if labels.ndim == 1:
            if labels.dtype != torch.int64:
                raise SynsetFormatError(f"hard labels must be int64 class indices, got {labels.dtype}")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise SynsetFormatError(
                    f"labels must lie in [0, {self.num_classes}) (one per entry of class_names), got "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )
        elif labels.ndim == 2:
            if labels.dtype != torch.float32:
                raise SynsetFormatError(f"soft labels must be float32, got {labels.dtype}; convert with labels.float()")
            if labels.shape[1] != self.num_classes:
                raise SynsetFormatError(
                    f"soft labels have {labels.shape[1]} columns but there are {self.num_classes} class_names; "
                    "they must agree"
                )
            if not torch.isfinite(labels).all():
                raise SynsetFormatError("soft labels contain NaN or inf")
            if isinstance(self.recipe, Standard) and self.recipe.loss == "ce":  # regression targets may be anything
                self._check_distributions()
        else:
            raise SynsetFormatError(f"labels must be (N,) or (N, K), got {tuple(labels.shape)}")
        if len(labels) != n:
            raise SynsetFormatError(f"{n} images but {len(labels)} labels")
        if images.ndim == 4 and self.norm.channels != images.shape[1]:
            raise SynsetFormatError(
                f"mean/std have {self.norm.channels} channel(s), images {images.shape[1]}: one value per channel"
            )
        if not isinstance(self.recipe, (Standard, Replay, KernelRidge, Teacher)):
            raise SynsetFormatError(
                f"recipe must be a Standard, Replay, KernelRidge or Teacher recipe, got {type(self.recipe).__name__}"
            )
        if isinstance(self.recipe, Teacher) and self.teacher is None:
            raise SynsetFormatError("a teacher recipe needs its teacher (the network whose soft labels it trains on)")
        if self.teacher is not None:
            try:
                self.teacher.check_fits(self.image_shape, self.num_classes, self.norm, self.zca is not None)
            except DistilsetError as e:
                raise SynsetFormatError(str(e)) from e
        if self.views is not None:
            if not isinstance(self.recipe, Teacher) or images.ndim != 4:
                raise SynsetFormatError("stored views belong to a teacher recipe on images; this set has neither")
            self.views.check(n, self.num_classes, tuple(images.shape[2:]), self.recipe)
        if isinstance(self.recipe, Replay):
            if self.lrs is None:
                raise SynsetFormatError("a replay recipe needs the learned lrs and step order")
            if self.recipe.init in ("fixed", "fixed-pretrained") and not self.init_params:
                raise SynsetFormatError(f"a replay from {self.recipe.init} init needs the stored init parameters")
        if self.zca is not None:
            d = math.prod(images.shape[1:])
            if tuple(self.zca.matrix.shape) != (d, d) or tuple(self.zca.mean.shape) != (d,):
                raise SynsetFormatError(f"ZCA matrix {tuple(self.zca.matrix.shape)} does not fit images of size {d}")
        self._check_steps()
        self._check_net()

    def _check_distributions(self) -> None:
        low = float(self.labels.min())
        if low < 0:
            raise SynsetFormatError(
                f"soft labels must be distributions (non-negative, rows summing to 1) for standard training, got an "
                f"entry of {low:.3g}; clip and renormalise them, or give the set the replay recipe it was learned for"
            )
        sums = self.labels.sum(1)
        worst = int((sums - 1).abs().argmax())
        if abs(float(sums[worst]) - 1) > LABEL_SUM_TOLERANCE:
            raise SynsetFormatError(
                f"soft labels must be distributions: every row must sum to 1 (within {LABEL_SUM_TOLERANCE:g}), row "
                f"{worst} sums to {float(sums[worst]):.4g}; renormalise them (labels / labels.sum(1, keepdim=True))"
            )

    def _check_steps(self) -> None:
        if (self.lrs is None) != (self.step_order is None):
            raise SynsetFormatError("lrs and step_order come together (recipe sets need both)")
        if self.lrs is None or self.step_order is None:
            return
        lrs, order, n = self.lrs, self.step_order, len(self.images)
        if lrs.ndim != 1 or order.ndim != 2 or len(lrs) != len(order) or len(lrs) == 0:
            raise SynsetFormatError(
                f"lrs (T,) and step_order (T, B) disagree: {tuple(lrs.shape)} vs {tuple(order.shape)}"
            )
        if order.dtype != torch.int64 or order.numel() == 0 or order.min() < 0 or order.max() >= n:
            raise SynsetFormatError(f"step_order must hold int64 item indices in [0, {n})")
        if lrs.dtype not in (torch.float32, torch.float64):
            raise SynsetFormatError(f"learned lrs must be float32 or float64, got {lrs.dtype}")
        if not torch.isfinite(lrs).all():
            raise SynsetFormatError("learned lrs contain NaN or inf")
        if lrs.min() < 0 or lrs.max() > MAX_LEARNED_LR:
            raise SynsetFormatError(
                f"learned lrs must lie in [0, {MAX_LEARNED_LR:g}] (a learned step size beyond that only destroys the "
                f"net), got [{float(lrs.min()):.3g}, {float(lrs.max()):.3g}]"
            )

    def _check_net(self) -> None:
        """`net` names a buildable net for these images; the stored init weights are finite and fit it."""
        init = self.init_params or {}
        for k, v in init.items():
            if v.dtype not in (torch.float32, torch.int64) or (v.is_floating_point() and not torch.isfinite(v).all()):
                problem = "contains NaN or inf" if v.dtype == torch.float32 else f"is {v.dtype}"
                raise SynsetFormatError(f"init.{k} {problem}: init weights must be finite float32 (int64 counters)")
        if self.net is None:
            if init:
                raise SynsetFormatError("the stored init weights (init.*) need the `net` they belong to")
            return
        name, kwargs, scheme = read_net_spec(self.net)
        shape = self.input_shape
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
                state = create_net(name, shape, self.num_classes, init=scheme, **kwargs).state_dict()
        except DistilsetError as e:
            raise SynsetFormatError(f"net {name} {kwargs} cannot be built for images {shape}: {e}") from e
        for k, v in init.items():
            if k not in state or tuple(state[k].shape) != tuple(v.shape):
                want = tuple(state[k].shape) if k in state else "no such weight"
                raise SynsetFormatError(
                    f"init.{k} has shape {tuple(v.shape)} but net {name} {kwargs} has {want}; the init weights "
                    "belong to another net"
                )

    # ---- pixel statistics ----------------------------------------------------------------------------
    def with_pixel_stats_of(self, reference: torch.Tensor) -> SyntheticSet:
        """This set with its images mapped by ``(x - mean_c) / s * s_ref + mean_ref_c``: each channel's mean
        becomes ``reference``'s (the real training images, in the same space) and the pixel scale (the root mean
        square over channels of the per-channel standard deviations) becomes theirs; one scale for all channels,
        so the channels keep their learned proportions. A network whose first layer (a convolution) is followed by
        instance or batch norm sees nearly the same thing in both (exactly so away from the zero-padded borders);
        a batch-norm network evaluated on real images then meets test inputs of the scale its running statistics
        saw. The learned statistics are kept in ``extra["learned_pixel_stats"]``, so the learned images can be
        recovered (``as_learned``)."""
        if self.images.ndim != 4:
            raise SynsetFormatError("pixel statistics need images (N, C, H, W); this set holds embeddings")
        dims = (0, 2, 3)
        x = self.images.detach().float()
        ref = reference.detach().float().to(x.device)
        mean, ref_mean = x.mean(dims, keepdim=True), ref.mean(dims, keepdim=True)
        scale = x.var(dims).mean().sqrt().clamp_min(1e-12).view(1, 1, 1, 1).expand_as(mean)
        ref_scale = ref.var(dims).mean().sqrt().view(1, 1, 1, 1).expand_as(mean)
        std, ref_std = scale, ref_scale
        images = ((x - mean) / std * ref_std + ref_mean).contiguous()
        flat = {"mean": mean, "std": std, "reference_mean": ref_mean, "reference_std": ref_std}
        learned = {k: v.flatten().tolist() for k, v in flat.items()}
        extra = {**self.extra, "learned_pixel_stats": learned}
        return dataclasses.replace(self, images=images, extra=extra, views=None)  # stored views were of other pixels

    def as_learned(self) -> SyntheticSet:
        """The set with the pixel statistics its method learned (undoes ``with_pixel_stats_of``); itself if its
        images were saved as learned."""
        stats = self.extra.get("learned_pixel_stats")
        if stats is None:
            return self
        shape = (1, -1, 1, 1)
        x = (self.images - torch.tensor(stats["reference_mean"]).view(shape)) / torch.tensor(
            stats["reference_std"]
        ).view(shape)
        images = (x * torch.tensor(stats["std"]).view(shape) + torch.tensor(stats["mean"]).view(shape)).contiguous()
        extra = {k: v for k, v in self.extra.items() if k != "learned_pixel_stats"}
        return dataclasses.replace(self, images=images, extra=extra, views=None)

    def torch_dataset(self, augment: bool = False, seed: int = 0) -> torch.utils.data.Dataset:
        """The set as a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, for a plain PyTorch training loop
        (labels as stored: class indices, or soft label vectors). ``augment`` applies the recipe's DSA strategy
        (or, for a set without one, none) to each image as it is drawn, from a generator seeded by ``seed``."""
        strategy = getattr(self.recipe, "dsa", None) if augment else None
        return _SetData(self.images.detach().cpu(), self.labels.detach().cpu(), strategy, seed)

    # ---- pixels and pictures -------------------------------------------------------------------------
    def to_pixels(self) -> torch.Tensor:
        """Images mapped back to [0, 1] pixel space (ZCA and normalisation undone), for pictures."""
        if self.images.ndim != 4:
            raise SynsetFormatError("this set holds embeddings, not images; it has no pixels")
        x = self.images.detach().float().cpu()
        if self.zca is not None:
            x = self.zca.invert(x)
        return self.norm.denormalize(x).clamp(0, 1)

    def picture(self, max_per_class: int = 20, tiles: int = 1):
        """A PIL picture of the set: one row per class (labelled by name), items of that class along the row;
        ``tiles`` > 1 tiles each image that many times per side (texture sets: any seam would show)."""
        from distilset.pictures import grid_picture

        pixels = self.to_pixels()
        if tiles > 1:
            pixels = pixels.repeat(1, 1, tiles, tiles)
        return grid_picture(pixels, self.hard_labels(), self.class_names, max_per_class)

    @property
    def is_texture(self) -> bool:
        return isinstance(self.recipe, Standard) and bool(self.recipe.crop)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one training input: a crop of a texture's canvas (its recipe's ``crop``), else an item's."""
        return (self.image_shape[0], *self.recipe.crop) if self.is_texture else tuple(self.image_shape)

    def save_grid(self, path: str | os.PathLike, max_per_class: int = 20) -> Path:
        """Write the set's ``picture`` as a PNG."""
        return atomic_write(path, lambda f: self.picture(max_per_class).save(f, format="PNG"))

    def save_tiles(self, path: str | os.PathLike, repeat: int = 3, max_per_class: int = 1) -> Path:
        """Texture sets: each class's canvas tiled ``repeat`` x ``repeat``, so any seam would show."""
        return atomic_write(path, lambda f: self.picture(max_per_class, tiles=repeat).save(f, format="PNG"))

    # ---- save / load ---------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"images": self.images, "labels": self.labels}
        if self.lrs is not None:
            t["lrs"], t["step_order"] = self.lrs, self.step_order
        if self.zca is not None:
            t["zca.mean"], t["zca.matrix"] = self.zca.mean, self.zca.matrix
        for k, v in (self.init_params or {}).items():
            t[f"init.{k}"] = v
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def save(self, directory: str | os.PathLike, grid: bool = True) -> Path:
        """Write synset.safetensors + synset.json (with teacher.safetensors and views.safetensors when the set has
        them; all together, ``io.write_together``) and, for images, grid.png."""
        self.validate()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "class_names": list(self.class_names),
            **self.norm.to_json(),
            "dataset": self.dataset,
            "method": self.method,
            "zca_eps": self.zca.eps if self.zca is not None else None,
            "recipe": recipe_to_json(self.recipe),
            "net": self.net,
            "config": self.config,
            "extra": self.extra,
            "teacher": self.teacher.spec() if self.teacher is not None else None,
            "views": self.views.listing() if self.views is not None else None,
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
            },
        }
        files = {out / TENSOR_FILE: safetensors_bytes(tensors, metadata={"format": FORMAT})}
        if self.teacher is not None:
            files[out / TEACHER_FILE] = self.teacher.to_bytes()
        if self.views is not None:
            files[out / VIEWS_FILE] = safetensors_bytes(self.views.tensors(), metadata={"format": FORMAT})
        files[out / META_FILE] = (json.dumps(meta, indent=2, default=_json) + "\n").encode()  # the listing: last
        write_together(files)
        if grid and self.images.ndim == 4:
            self.save_grid(out / GRID)
            if self.is_texture:
                self.save_tiles(out / TILES)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SyntheticSet:
        """Read a set written by ``save``; raise SynsetFormatError on anything malformed.

        Every json field is type- and range-checked (``_fields_from_meta``) and every tensor by ``validate``; the
        ``dataset`` a set names is returned as a hint and never opened here.
        """
        d = Path(directory)
        if not (d / META_FILE).is_file() or not (d / TENSOR_FILE).is_file():
            raise SynsetFormatError(
                f"{d} is not a saved synthetic set: need {META_FILE} and {TENSOR_FILE} "
                "(made by `distilset distill` or `distilset baseline`)"
            )
        try:
            meta = load_json(d / META_FILE)
        except DistilsetError as e:
            raise SynsetFormatError(f"{e}; {DAMAGED}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SynsetFormatError(f"{d / META_FILE} is not a distilset synset file (format field missing)")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
            raise SynsetFormatError(
                f"{d} has synset format version {version!r}; this distilset reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade distilset or re-export the set"
            )
        try:
            tensors = load_file(str(d / TENSOR_FILE))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise SynsetFormatError(f"{d / TENSOR_FILE} is unreadable ({e}); {DAMAGED}") from e
        _check_listing(d, meta.get("tensors"), tensors)
        for key in ("images", "labels"):
            if key not in tensors:
                raise SynsetFormatError(f"{d}: {TENSOR_FILE} has no {key} tensor; {DAMAGED}")
        if ("zca.matrix" in tensors) != ("zca.mean" in tensors):
            raise SynsetFormatError(
                f"{d}: a ZCA set needs both zca.matrix and zca.mean, found only "
                f"{'zca.matrix' if 'zca.matrix' in tensors else 'zca.mean'}; without both the set cannot be "
                f"evaluated in its whitened space: {DAMAGED}"
            )
        try:
            fields = _fields_from_meta(meta, has_lrs="lrs" in tensors)
            if meta.get("teacher") is not None:
                fields["teacher"] = load_teacher(d, spec=meta["teacher"])
            if meta.get("views") is not None:
                fields["views"] = _load_views(d, meta["views"])
            eps = fields.pop("zca_eps")
            zca = ZCA(tensors["zca.mean"], tensors["zca.matrix"], eps) if "zca.matrix" in tensors else None
            return cls(
                images=tensors["images"],
                labels=tensors["labels"],
                zca=zca,
                lrs=tensors.get("lrs"),
                step_order=tensors.get("step_order"),
                init_params={k[5:]: v for k, v in tensors.items() if k.startswith("init.")} or None,
                **fields,
            )
        except SynsetFormatError as e:
            raise SynsetFormatError(f"{d}: {e}") from e
        except DistilsetError as e:
            raise SynsetFormatError(f"{d}: {META_FILE}: {e}; {DAMAGED}") from e
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise SynsetFormatError(f"{d}: malformed metadata ({e}); {DAMAGED}") from e


DAMAGED = "the set is damaged: restore it from a copy or make it again"


def _load_views(d: Path, listing) -> StoredViews:
    """The stored views listed in synset.json; their shapes and values are checked with the set (``validate``)."""
    path = d / VIEWS_FILE
    listing = jsonread.mapping(listing, "views")
    if not path.is_file():
        raise SynsetFormatError(
            f"{d} lists stored views but {VIEWS_FILE} is missing; relabel the set again "
            "(`distilset relabel`) or remove the views entry"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SynsetFormatError(f"{path} is unreadable ({e}); relabel the set again (`distilset relabel`)") from e
    if set(tensors) != set(VIEW_NAMES):
        raise SynsetFormatError(f"{path} holds {sorted(tensors)}, not the views {sorted(VIEW_NAMES)}")
    batch = jsonread.whole(listing.get("batch_size"), "views.batch_size", 1, 1 << 30)
    return StoredViews(batch_size=batch, **tensors)


def _check_listing(d: Path, listing, tensors: dict[str, torch.Tensor]) -> None:
    """synset.json lists every tensor with its shape and dtype; the two files must agree."""
    if not isinstance(listing, dict) or not all(isinstance(v, dict) for v in listing.values()):
        raise SynsetFormatError(f"{d / META_FILE}: tensors must map each tensor to its shape and dtype; {DAMAGED}")
    if set(listing) != set(tensors):
        raise SynsetFormatError(f"{d}: tensors {sorted(tensors)} do not match the listing {sorted(listing)}")
    for k, v in tensors.items():
        want = listing[k]
        if list(v.shape) != want.get("shape") or str(v.dtype).removeprefix("torch.") != want.get("dtype"):
            raise SynsetFormatError(
                f"{d}: tensor {k} is {str(v.dtype)} {list(v.shape)}, listed as "
                f"{want.get('dtype')} {want.get('shape')}; the files do not belong together"
            )


def _fields_from_meta(meta: dict, has_lrs: bool) -> dict:
    """The SyntheticSet fields stored in synset.json, each type- and range-checked (DistilsetError names it)."""
    eps = meta.get("zca_eps")
    if meta["version"] >= 2:
        recipe, net = recipe_from_json(meta.get("recipe")), meta.get("net")
    else:
        recipe, net = _recipe_v1(meta, has_lrs), _net_v1(meta.get("net"))
    return {
        "class_names": tuple(jsonread.strings(meta.get("class_names"), "class_names")),
        "norm": Normalization(meta.get("mean"), meta.get("std")),
        "dataset": jsonread.string(meta.get("dataset", ""), "dataset"),
        "method": jsonread.string(meta.get("method", ""), "method"),
        "zca_eps": 0.1 if eps is None else jsonread.number(eps, "zca_eps", positive=True),
        "recipe": recipe,
        "net": None if net is None else jsonread.mapping(net, "net"),
        "config": jsonread.mapping(meta.get("config") or {}, "config"),
        "extra": jsonread.mapping(meta.get("extra") or {}, "extra"),
    }


def _recipe_v1(meta: dict, has_lrs: bool) -> Recipe:
    """The recipe a version-1 set implied: its learned steps, or standard training with its lr/DSA/crops."""
    try:
        if has_lrs:
            return Replay(init=meta.get("init_regime") or "random")
        texture = jsonread.mapping(meta.get("extra") or {}, "extra").get("texture")
        crop = jsonread.mapping(texture, "extra.texture").get("crop") if texture else None
        lr = meta.get("train_lr")
        return Standard(lr=0.01 if lr is None else lr, dsa=meta.get("dsa_strategy"), crop=crop)
    except DistilsetError as e:
        raise SynsetFormatError(f"the set's training recipe (version 1 fields) is invalid: {e}") from e


def _net_v1(net: dict | None) -> dict | None:
    """Version-1 ConvNets without a depth were built at the default depth whatever the input; keep it so."""
    if (
        isinstance(net, dict)
        and str(net.get("name", "")).startswith("convnet")
        and isinstance(net.get("kwargs", {}), dict)
        and "depth" not in net.get("kwargs", {})
    ):
        default = 4 if net["name"] == "convnet-d4" else 3
        return {**net, "kwargs": {**net.get("kwargs", {}), "depth": default}}
    return net


def _json(o):
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"cannot store {type(o).__name__} in synset.json")
