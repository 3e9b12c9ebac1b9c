"""MNIST, KMNIST and Fashion-MNIST from their standard IDX files.

Fashion-MNIST is found, in order, at: the ``path`` argument, ``$DISTILSET_FASHION_MNIST_DIR``,
``ROOT/fashion-mnist``, and the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist).
MNIST and KMNIST live under ``ROOT/mnist`` and ``ROOT/kmnist`` and can be downloaded on request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distilset.data.dataset import DSA_NO_FLIP, DSA_WITH_FLIP, Dataset, from_arrays
from distilset.data.download import download_verified
from distilset.data.idx import read_idx
from distilset.errors import DatasetNotFoundError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_ENV = "DISTILSET_FASHION_MNIST_DIR"


@dataclass(frozen=True)
class IdxSpec:
    """Where an IDX dataset comes from and how it is normalised."""

    name: str
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dsa_strategy: str
    url: str | None = None
    md5: tuple[str, ...] = ()  # one per FILES entry (gzipped), torchvision's published values


MNIST = IdxSpec(
    "mnist",
    tuple(str(d) for d in range(10)),
    (0.1307,),
    (0.3081,),
    DSA_NO_FLIP,
    url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    md5=(
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
)
KMNIST = IdxSpec(
    "kmnist",
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    (0.1918,),
    (0.3483,),
    DSA_NO_FLIP,
    url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    md5=(
        "bdb82020997e1d708af4cf47b453dcf7",
        "e144d726b3acfaa3e44228e80efcd344",
        "5c965bf0a639b31b8f53240b1b52f4d7",
        "7320c461ea6c1c855c0b718fb2a4b134",
    ),
)
FASHION_MNIST = IdxSpec(
    "fashion-mnist",
    (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    (0.2860,),
    (0.3530,),
    DSA_WITH_FLIP,
)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    return None


def fashion_dir(root: Path, path: str | os.PathLike | None = None) -> Path:
    """The first Fashion-MNIST directory in the documented search order (may not exist)."""
    if path is not None:
        return Path(path)
    if os.environ.get(FASHION_ENV):
        return Path(os.environ[FASHION_ENV])
    if (root / "fashion-mnist").exists():
        return root / "fashion-mnist"
    return DEBIAN_FASHION_DIR


def idx_present(directory: Path) -> bool:
    return all(_find(directory, stem) is not None for stem in FILES)


def load_idx_dataset(spec: IdxSpec, directory: Path, download: bool = False) -> Dataset:
    """Read the four IDX files of ``spec`` from ``directory`` (downloading them first if asked)."""
    if download and spec.url and not idx_present(directory):
        for stem, md5 in zip(FILES, spec.md5, strict=True):
            download_verified(spec.url + stem + ".gz", directory / f"{stem}.gz", md5)
    paths = [_find(directory, stem) for stem in FILES]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(FILES, paths, strict=True) if p is None]
        if spec.name == "fashion-mnist":
            hint = (
                "install the Debian package dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist), "
                f"or point --data-path / ${FASHION_ENV} at a directory holding the IDX files"
            )
        else:
            hint = "place the files there, pass --data-root, or use --download (load_dataset(..., download=True))"
        raise DatasetNotFoundError(f"{spec.name}: missing {', '.join(missing)}(.gz) in {directory}; {hint}")
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    return from_arrays(
        spec.name,
        train_x[:, None],
        train_y,
        test_x[:, None],
        test_y,
        class_names=spec.class_names,
        mean=spec.mean,
        std=spec.std,
        dsa_strategy=spec.dsa_strategy,
        description=f"{spec.name} IDX files from {directory}",
    )
