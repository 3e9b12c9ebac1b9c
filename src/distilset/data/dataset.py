"""The in-memory dataset every method and the evaluation harness consume.

Images are stored normalised, ``(x / 255 - mean) / std`` per channel (and ZCA-whitened when asked for);
``DatasetInfo.norm`` (a ``Normalization``, the one type for this everywhere) keeps what is needed to undo
that for pictures and to rebuild the same preprocessing. ``Dataset.sample_per_class`` is the one
class-balanced sampler (baselines, real-image initialisation, base examples, per-class real batches).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from distilset.data.split import stratified_split
from distilset.data.zca import ZCA
from distilset.errors import ConfigError, DistilsetError

# DSA strategies (Zhao & Bilen, DSA, ICML 2021): no flip for digit-like data, whose meaning changes under mirroring.
DSA_WITH_FLIP = "color_crop_cutout_flip_scale_rotate"
DSA_NO_FLIP = "color_crop_cutout_scale_rotate"


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation: ``normalize(pixels) = (pixels - mean) / std`` on (N, C, H, W) in [0, 1]."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise DistilsetError(f"{name} must be a list of numbers, one per channel, got {values!r}")
            values = tuple(values)
            if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
                raise DistilsetError(f"{name} must be a list of numbers, one per channel, got {list(values)!r}")
            if not all(math.isfinite(v) and abs(v) <= 1e4 for v in values):  # pixels in [0, 1]; embeddings near it
                raise DistilsetError(f"{name} must be finite numbers from -10000 to 10000, got {list(values)}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if len(self.mean) != len(self.std) or not self.mean:
            raise DistilsetError(f"mean and std need one value per channel, got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise DistilsetError(f"std must be > 0 in every channel (it divides the pixels), got {list(self.std)}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels) + (1,) * (x.ndim - 2)
        return torch.tensor(self.mean, dtype=x.dtype).view(shape), torch.tensor(self.std, dtype=x.dtype).view(shape)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(pixels)
        return (pixels - mean.to(pixels.device)) / std.to(pixels.device)

    def normalize_(self, pixels: torch.Tensor) -> torch.Tensor:
        """``normalize`` in place (the same arithmetic, no second copy of the pixels); returns ``pixels``."""
        mean, std = self._stats(pixels)
        return pixels.sub_(mean.to(pixels.device)).div_(std.to(pixels.device))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return x * std.to(x.device) + mean.to(x.device)

    def to_json(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset: names, shape and the normalisation applied to its tensors."""

    name: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]
    norm: Normalization
    dsa_strategy: str = DSA_WITH_FLIP
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            **self.norm.to_json(),
            "dsa_strategy": self.dsa_strategy,
            "description": self.description,
        }


@dataclass
class Dataset:
    """Train/test tensors plus metadata. ``train_x``: float32 (N, C, H, W) images, float32 (N, D) embedded
    inputs, or int64 (N, L) token ids with ``token_embedding`` (V, D), the frozen (normalised) rows that the
    text networks and the baselines look them up in; ``train_y``: int64 (N,)."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    zca: ZCA | None = field(default=None)
    token_embedding: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one input as a network sees it (and as a distilled item has it): an image (C, H, W), an
        embedded vector (D,), or for token ids their embedded rows (L, D)."""
        if self.token_embedding is not None:
            return (*self.train_x.shape[1:], self.token_embedding.shape[1])
        return tuple(self.train_x.shape[1:])

    @property
    def flips(self) -> bool:
        """Whether a mirrored image keeps its class (the dataset's DSA strategy flips; the digits' does not)."""
        return "flip" in self.info.dsa_strategy

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``train_x`` / ``test_x`` as float inputs: token ids looked up in ``token_embedding``."""
        return self.token_embedding[x] if self.token_embedding is not None else x

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices of the training examples of class ``c``."""
        return torch.nonzero(self.train_y == c, as_tuple=True)[0]

    def class_batch(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random training images of class ``c`` without replacement (all of a smaller class): the real
        batch of the per-class matching losses (DC, DSA, DM)."""
        members = self.class_indices(c)
        return self.train_x[members[torch.randperm(len(members), generator=generator)[:n]]]

    def validation_split(self, share: float = 0.1, cap: int = 100) -> tuple[Dataset, Dataset]:
        """Hold out ``share`` of each class's training images (at least 1, at most ``cap``), always the same
        ones: returns (the rest, for distilling; the held-out images as the test split of a second dataset,
        for monitoring). The test split is in neither."""
        y = self.train_y.cpu().numpy()
        per_class = min(cap, max(1, int(round(share * int(np.bincount(y).min())))))
        keep, held = (torch.from_numpy(i).to(self.train_y.device) for i in stratified_split(y, per_class, seed=0))
        rest = replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep])
        validation = replace(
            self,
            train_x=self.train_x[keep],
            train_y=self.train_y[keep],
            test_x=self.train_x[held],
            test_y=self.train_y[held],
        )
        return rest, validation

    def require_per_class(self, n: int, what: str = "`ipc`") -> None:
        """Refuse ``n`` images per class when a class has fewer, naming the smallest class and the largest n."""
        sizes = torch.bincount(self.train_y, minlength=self.num_classes)
        c = int(sizes.argmin())
        if int(sizes[c]) == 0:
            raise DistilsetError(
                f"class {c} ({self.info.class_names[c]!r}) has no training images, so {what} {n} "
                "cannot be drawn from it; give every class training images"
            )
        if n > int(sizes[c]):
            raise DistilsetError(
                f"{what} {n} needs {n} training images of every class; class {c} ({self.info.class_names[c]!r}) has "
                f"{int(sizes[c])}, the fewest: use {int(sizes[c])} or less"
            )

    def sample_per_class(self, n: int | float, generator: torch.Generator, what: str = "`ipc`") -> torch.Tensor:
        """Indices of ``n`` training examples of every class (a float in (0, 1): that share of each class, at
        least one), drawn without replacement, class after class.

        A class with fewer than ``n`` examples is an error that names ``what`` asked for them.
        """
        if not isinstance(n, float):
            self.require_per_class(n, what)
        picks = []
        for c in range(self.num_classes):
            members = self.class_indices(c)
            if isinstance(n, float):
                n_c = max(1, round(n * len(members)))
                picks.append(members[torch.randperm(len(members), generator=generator)[:n_c]])
                continue
            picks.append(members[torch.randperm(len(members), generator=generator)[:n]])
        return torch.cat(picks)

    def holdout(
        self, share: float | int, generator: torch.Generator, what: str = "`validation`"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(held, rest): training indices of ``share`` of every class (or that many per class, drawn as
        ``sample_per_class`` draws them) and of all the others; refused when nothing is left."""
        held = self.sample_per_class(share, generator, what=what)
        rest = torch.ones(len(self.train_y), dtype=torch.bool, device=self.train_y.device)
        rest[held] = False
        if not bool(rest.any()):
            raise ConfigError(f"{what} takes every training image; leave some out")
        return held, torch.nonzero(rest, as_tuple=True)[0]

    def to(self, device: str | torch.device) -> Dataset:
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
            token_embedding=None if self.token_embedding is None else self.token_embedding.to(device),
        )

    def with_zca(self, eps: float = 0.1) -> Dataset:
        """ZCA whitening fitted on the raw [0, 1] training pixels (as MTT and KIP fit it: eps added to the
        covariance eigenvalues), applied to train and test; it acts on the normalised tensors (same result)."""
        if self.zca is not None:
            return self
        if len(self.image_shape) != 3 or self.token_embedding is not None:
            raise DistilsetError(f"ZCA whitens images; {self.info.name} has inputs of shape {self.image_shape}")
        norm = self.info.norm
        zca = ZCA.fit(norm.denormalize(self.train_x), eps=eps).for_normalized(norm, self.image_shape)
        return replace(self, train_x=zca.apply(self.train_x), test_x=zca.apply(self.test_x), zca=zca)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.info.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
            f"classes={self.num_classes}, zca={self.zca is not None})"
        )


def _class_names(name: str, train_y: torch.Tensor, test_y: torch.Tensor, names: tuple[str, ...] | None):
    """The class names, after checking the labels are class indices 0..K-1 with at least 2 classes trained on."""
    low, high = int(min(train_y.min(), test_y.min())), int(max(train_y.max(), test_y.max()))
    if low < 0:
        raise DistilsetError(f"{name}: labels must be class indices 0..K-1, found {low}; relabel the classes from 0")
    if names is not None and high >= len(names):
        raise DistilsetError(
            f"{name}: labels go up to {high} but class_names has {len(names)} names; give one name per class"
        )
    if names is None and high > int(train_y.max()):
        raise DistilsetError(
            f"{name}: test labels go up to {high} but training labels only to {int(train_y.max())}: every class "
            "needs training images; relabel the classes 0..K-1"
        )
    if names is None and high >= len(train_y):
        raise DistilsetError(
            f"{name}: labels go up to {high} with only {len(train_y)} training images; labels must be class "
            "indices 0..K-1 (or give class_names)"
        )
    present = torch.unique(train_y)
    if len(present) < 2:
        raise DistilsetError(
            f"{name}: the training labels hold only class {int(present[0])}; a classification set needs at least "
            "2 classes"
        )
    return tuple(str(c) for c in range(high + 1)) if names is None else tuple(names)


def from_arrays(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: tuple[str, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    scale: float = 255.0,
    dsa_strategy: str = DSA_WITH_FLIP,
    description: str = "",
) -> Dataset:
    """Build a normalised Dataset from raw arrays of shape (N, C, H, W) with values in [0, scale].

    ``mean``/``std`` default to per-channel statistics of the training images (after dividing by ``scale``).
    """
    if train_x.ndim != 4 or test_x.ndim != 4:
        raise DistilsetError(f"{name}: images must be (N, C, H, W), got {train_x.shape} and {test_x.shape}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DistilsetError(f"{name}: train images {train_x.shape[1:]} and test {test_x.shape[1:]} differ")
    for split, images, labels in (("training", train_x, train_y), ("test", test_x, test_y)):
        if len(images) != len(labels):
            raise DistilsetError(f"{name}: {len(images)} {split} images but {len(labels)} labels; give one label each")
        if len(images) == 0:
            raise DistilsetError(
                f"{name}: the {split} split has no images; add some (a class needs at least 3 images for the 20 % "
                "held out for testing when no test split is given)"
            )
    # One float32 copy per split, scaled by the division that makes it and normalised in place below: 60,000
    # Fashion-MNIST images held three 188 MB copies at once before.
    tx = torch.from_numpy(np.divide(np.asarray(train_x), scale, dtype=np.float32))
    vx = torch.from_numpy(np.divide(np.asarray(test_x), scale, dtype=np.float32))
    if mean is None or std is None:
        mean = tuple(float(v) for v in tx.mean(dim=(0, 2, 3)))
        std = tuple(max(float(v), 1e-6) for v in tx.std(dim=(0, 2, 3)))
    if len(mean) != tx.shape[1] or len(std) != tx.shape[1]:
        raise DistilsetError(f"{name}: mean/std need one value per channel ({tx.shape[1]})")
    norm = Normalization(mean, std)
    ty = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    vy = torch.as_tensor(np.asarray(test_y, dtype=np.int64))
    class_names = _class_names(name, ty, vy, class_names)
    info = DatasetInfo(
        name=name,
        class_names=tuple(class_names),
        image_shape=tuple(int(d) for d in tx.shape[1:]),
        norm=norm,
        dsa_strategy=dsa_strategy,
        description=description,
    )
    return Dataset(info, norm.normalize_(tx), ty, norm.normalize_(vx), vy)
