"""SyntheticSet: a distilled (or baseline) training set that carries everything needed to use it.

On disk a set is ``synset.safetensors`` (tensors) plus ``synset.json`` (metadata, the typed training recipe,
the resolved config of the method that made it, a listing of the tensors with shapes and dtypes, and the
format version), both written atomically; no pickle anywhere. ``load`` validates the pair and refuses
malformed files with a message naming the problem. Version 1 files (before typed recipes) are read and
converted: learned lrs become a ``Replay`` recipe, a learned ``train_lr`` / DSA strategy / texture crop a
``Standard`` one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from distilset.data.dataset import Normalization
from distilset.data.zca import ZCA
from distilset.errors import DistilsetError, SynsetFormatError
from distilset.io import save_tensors, write_json
from distilset.recipes import Recipe, Replay, Standard, recipe_from_json, recipe_to_json

FORMAT = "distilset.synset"
VERSION = 2
READABLE_VERSIONS = (1, 2)
TENSOR_FILE = "synset.safetensors"
META_FILE = "synset.json"


@dataclass
class SyntheticSet:
    """Images (or embeddings), labels and the metadata that says how to train on them.

    images: float (N, C, H, W) in the dataset's normalised (and possibly ZCA) space, or (N, D) embeddings.
    labels: int64 (N,) hard labels, or float (N, K) soft label vectors.
    recipe: how a fresh network must be trained on the set (``Standard`` or ``Replay``, see recipes.py).
    lrs / step_order: per-step learned learning rates (T,) and the item indices of each step (T, B), which a
    ``Replay`` recipe replays. init_params: the fixed initial weights of a fixed-init set.
    net: {"name", "kwargs", "init"} of the distillation net. config: the resolved config of the method.
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

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.validate()

    @classmethod
    def for_dataset(cls, data, images: torch.Tensor, labels: torch.Tensor, method: str, **fields) -> SyntheticSet:
        """A set in ``data``'s space: its class names, normalisation, name and ZCA come along."""
        info = data.info
        return cls(images=images, labels=labels, class_names=info.class_names, norm=info.norm, dataset=info.name,
                   method=method, zca=data.zca, **fields)  # fmt: skip

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
        """Check shapes, dtypes and finiteness; raise SynsetFormatError naming the first problem."""
        n = len(self.images)
        if self.images.ndim not in (2, 4) or not self.images.is_floating_point():
            raise SynsetFormatError(
                f"images must be float (N, C, H, W) or (N, D), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if n == 0:
            raise SynsetFormatError("a synthetic set needs at least one image")
        if not torch.isfinite(self.images).all():
            raise SynsetFormatError("images contain NaN or inf")
        if self.labels.ndim == 1:
            if self.labels.dtype != torch.int64:
                raise SynsetFormatError(f"hard labels must be int64, got {self.labels.dtype}")
            if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
                raise SynsetFormatError(
                    f"labels must lie in [0, {self.num_classes}), got "
                    f"[{int(self.labels.min())}, {int(self.labels.max())}]"
                )
        elif self.labels.ndim == 2:
            if not self.labels.is_floating_point() or self.labels.shape[1] != self.num_classes:
                raise SynsetFormatError(
                    f"soft labels must be float (N, {self.num_classes}), got "
                    f"{self.labels.dtype} {tuple(self.labels.shape)}"
                )
            if not torch.isfinite(self.labels).all():
                raise SynsetFormatError("soft labels contain NaN or inf")
        else:
            raise SynsetFormatError(f"labels must be (N,) or (N, K), got {tuple(self.labels.shape)}")
        if len(self.labels) != n:
            raise SynsetFormatError(f"{n} images but {len(self.labels)} labels")
        if self.images.ndim == 4 and self.norm.channels != self.images.shape[1]:
            raise SynsetFormatError(f"mean/std have {self.norm.channels} channels, images {self.images.shape[1]}")
        if not isinstance(self.recipe, (Standard, Replay)):
            raise SynsetFormatError(f"recipe must be a Standard or Replay recipe, got {type(self.recipe).__name__}")
        if isinstance(self.recipe, Replay):
            if self.lrs is None:
                raise SynsetFormatError("a replay recipe needs the learned lrs and step order")
            if self.recipe.init in ("fixed", "fixed-pretrained") and not self.init_params:
                raise SynsetFormatError(f"a replay from {self.recipe.init} init needs the stored init parameters")
        if self.zca is not None:
            d = math.prod(self.images.shape[1:])
            if tuple(self.zca.matrix.shape) != (d, d) or tuple(self.zca.mean.shape) != (d,):
                raise SynsetFormatError(f"ZCA matrix {tuple(self.zca.matrix.shape)} does not fit images of size {d}")
        if (self.lrs is None) != (self.step_order is None):
            raise SynsetFormatError("lrs and step_order come together (recipe sets need both)")
        if self.lrs is not None and self.step_order is not None:
            if self.lrs.ndim != 1 or self.step_order.ndim != 2 or len(self.lrs) != len(self.step_order):
                raise SynsetFormatError(
                    f"lrs (T,) and step_order (T, B) disagree: {tuple(self.lrs.shape)} vs "
                    f"{tuple(self.step_order.shape)}"
                )
            if self.step_order.dtype != torch.int64 or self.step_order.min() < 0 or self.step_order.max() >= n:
                raise SynsetFormatError(f"step_order must hold int64 item indices in [0, {n})")
            if not torch.isfinite(self.lrs).all():
                raise SynsetFormatError("learned lrs contain NaN or inf")

    # ---- pixels and pictures -------------------------------------------------------------------------
    def to_pixels(self) -> torch.Tensor:
        """Images mapped back to [0, 1] pixel space (ZCA and normalisation undone), for pictures."""
        if self.images.ndim != 4:
            raise SynsetFormatError("this set holds embeddings, not images; it has no pixels")
        x = self.images.detach().float().cpu()
        if self.zca is not None:
            x = self.zca.invert(x)
        return self.norm.denormalize(x).clamp(0, 1)

    def save_grid(self, path: str | os.PathLike, max_per_class: int = 20) -> Path:
        """Write a PNG grid: one row per class (label by name), items of that class along the row."""
        from distilset.report import image_grid

        return image_grid(self.to_pixels(), self.hard_labels(), self.class_names, Path(path), max_per_class)

    def save_tiles(self, path: str | os.PathLike, repeat: int = 3, max_per_class: int = 1) -> Path:
        """Texture sets: each class's canvas tiled ``repeat`` x ``repeat``, so any seam would show."""
        from distilset.report import image_grid

        tiled = self.to_pixels().repeat(1, 1, repeat, repeat)
        return image_grid(tiled, self.hard_labels(), self.class_names, Path(path), max_per_class)

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
        """Write synset.safetensors + synset.json (each atomically) and, for images, grid.png."""
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
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
            },
        }
        save_tensors(out / TENSOR_FILE, tensors, metadata={"format": FORMAT})
        write_json(out / META_FILE, meta, default=_json)
        if grid and self.images.ndim == 4:
            self.save_grid(out / "grid.png")
            if isinstance(self.recipe, Standard) and self.recipe.crop:
                self.save_tiles(out / "tiles.png")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SyntheticSet:
        """Read a set written by ``save``; raise SynsetFormatError on anything malformed."""
        d = Path(directory)
        if not (d / META_FILE).exists() or not (d / TENSOR_FILE).exists():
            raise SynsetFormatError(
                f"{d} is not a saved synthetic set: need {META_FILE} and {TENSOR_FILE} "
                "(made by `distilset distill` or `distilset baseline`)"
            )
        try:
            meta = json.loads((d / META_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SynsetFormatError(f"{d / META_FILE} is not valid JSON ({e}); the set is corrupt") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SynsetFormatError(f"{d / META_FILE} is not a distilset synset file (format field missing)")
        if meta.get("version") not in READABLE_VERSIONS:
            raise SynsetFormatError(
                f"{d} has synset format version {meta.get('version')}; this distilset reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade distilset or re-export the set"
            )
        try:
            tensors = load_file(str(d / TENSOR_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise SynsetFormatError(f"{d / TENSOR_FILE} is unreadable ({e}); the set is corrupt") from e
        listing = meta.get("tensors", {})
        if set(listing) != set(tensors):
            raise SynsetFormatError(f"{d}: tensors {sorted(tensors)} do not match the listing {sorted(listing)}")
        for k, v in tensors.items():
            want = listing[k]
            if list(v.shape) != want.get("shape") or str(v.dtype).removeprefix("torch.") != want.get("dtype"):
                raise SynsetFormatError(
                    f"{d}: tensor {k} is {str(v.dtype)} {list(v.shape)}, listed as "
                    f"{want.get('dtype')} {want.get('shape')}; the files do not belong together"
                )
        for key in ("images", "labels", "class_names", "mean", "std"):
            if key not in tensors and key not in meta:
                raise SynsetFormatError(f"{d}: missing {key}")
        zca = None
        if "zca.matrix" in tensors:
            zca = ZCA(tensors["zca.mean"], tensors["zca.matrix"], meta.get("zca_eps") or 0.1)
        init = {k[5:]: v for k, v in tensors.items() if k.startswith("init.")} or None
        try:
            if meta["version"] >= 2:
                recipe, net = recipe_from_json(meta.get("recipe")), meta.get("net")
            else:
                recipe, net = _recipe_v1(meta, "lrs" in tensors), _net_v1(meta.get("net"))
            return cls(
                images=tensors["images"],
                labels=tensors["labels"],
                class_names=tuple(meta["class_names"]),
                norm=Normalization(meta["mean"], meta["std"]),
                dataset=meta.get("dataset", ""),
                method=meta.get("method", ""),
                zca=zca,
                recipe=recipe,
                lrs=tensors.get("lrs"),
                step_order=tensors.get("step_order"),
                init_params=init,
                net=net,
                config=meta.get("config") or {},
                extra=meta.get("extra") or {},
            )
        except SynsetFormatError as e:
            raise SynsetFormatError(f"{d}: {e}") from e
        except (DistilsetError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise SynsetFormatError(f"{d}: malformed metadata ({e}); the set is corrupt") from e


def _recipe_v1(meta: dict, has_lrs: bool) -> Recipe:
    """The recipe a version-1 set implied: its learned steps, or standard training with its lr/DSA/crops."""
    if has_lrs:
        return Replay(init=meta.get("init_regime") or "random")
    texture = (meta.get("extra") or {}).get("texture")
    lr = meta.get("train_lr")
    return Standard(lr=0.01 if lr is None else lr, dsa=meta.get("dsa_strategy"),
                    crop=tuple(texture["crop"]) if texture else None)  # fmt: skip


def _net_v1(net: dict | None) -> dict | None:
    """Version-1 ConvNets without a depth were built at the default depth whatever the input; keep it so."""
    if (
        isinstance(net, dict)
        and str(net.get("name", "")).startswith("convnet")
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
