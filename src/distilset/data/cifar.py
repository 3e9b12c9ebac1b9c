"""Reader for the CIFAR-10 / CIFAR-100 *binary* versions (fixed-length records, no pickle).

CIFAR-10 record: 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32).
CIFAR-100 record: coarse label byte, fine label byte, then the 3072 pixel bytes; we use the fine label.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distilset.data.dataset import DSA_WITH_FLIP, Dataset, from_arrays
from distilset.data.download import download_verified
from distilset.errors import DatasetNotFoundError, DistilsetError
from distilset.io import write_bytes

PIXELS = 3 * 32 * 32


def read_cifar_binary(paths: list[Path], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR binary batch files -> (uint8 N x 3 x 32 x 32, int64 labels)."""
    record = label_bytes + PIXELS
    images, labels = [], []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DistilsetError(
                f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records; "
                "the file is truncated or not the binary version (the python/pickle version is not read)"
            )
        rows = raw.reshape(-1, record)
        labels.append(rows[:, label_bytes - 1].astype(np.int64))
        images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def write_cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray, label_bytes: int) -> None:
    """Write records in the same layout (fixtures for tests); extra label bytes are written as 0."""
    n = len(images)
    rows = np.zeros((n, label_bytes + PIXELS), dtype=np.uint8)
    rows[:, label_bytes - 1] = labels
    rows[:, label_bytes:] = images.reshape(n, PIXELS)
    rows.tofile(path)


# --- sources -------------------------------------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSpec:
    """One CIFAR binary release: archive, checksum (from the CIFAR page), members and label layout."""

    name: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def url(self) -> str:
        return "https://www.cs.toronto.edu/~kriz/" + self.archive


CIFAR10 = CifarSpec(
    "cifar10",
    "cifar-10-binary.tar.gz",
    "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    ("test_batch.bin",),
    1,
    10,
    # DC / DSA / MTT use these constants; keeping them makes our sets interchangeable with theirs.
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
)
CIFAR100 = CifarSpec(
    "cifar100",
    "cifar-100-binary.tar.gz",
    "03b5dce01913d631647c71ecec9e9cb8",
    "cifar-100-binary",
    ("train.bin",),
    ("test.bin",),
    2,
    100,
    mean=(0.5071, 0.4866, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def cifar_present(spec: CifarSpec, root: Path) -> bool:
    folder = root / spec.name / spec.folder
    return all((folder / f).exists() for f in spec.train_files + spec.test_files)


def _extract_members(archive: Path, spec: CifarSpec, dest: Path) -> None:
    """Extract only the expected regular files (no path traversal, no links) from the tarball."""
    wanted = {f"{spec.folder}/{f}" for f in spec.train_files + spec.test_files}
    wanted |= {f"{spec.folder}/batches.meta.txt", f"{spec.folder}/fine_label_names.txt"}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                write_bytes(target, src.read())


def load_cifar(spec: CifarSpec, root: Path, download: bool = False) -> Dataset:
    """Read a CIFAR binary release from ``ROOT/NAME/FOLDER`` (downloading and extracting on request)."""
    base = root / spec.name
    if not cifar_present(spec, root):
        archive = base / spec.archive
        if download:
            download_verified(spec.url, archive, spec.md5)
        if archive.exists():
            _extract_members(archive, spec, base)
    if not cifar_present(spec, root):
        raise DatasetNotFoundError(
            f"{spec.name}: binary files not found in {base / spec.folder}; put {spec.archive} (binary version, "
            f"from the CIFAR page) in {base}, pass --data-root, or use --download"
        )
    folder = base / spec.folder
    train_x, train_y = read_cifar_binary([folder / f for f in spec.train_files], spec.label_bytes)
    test_x, test_y = read_cifar_binary([folder / f for f in spec.test_files], spec.label_bytes)
    names = _class_names(folder, spec)
    return from_arrays(
        spec.name,
        train_x,
        train_y,
        test_x,
        test_y,
        class_names=names,
        mean=spec.mean,
        std=spec.std,
        dsa_strategy=DSA_WITH_FLIP,
        description=f"{spec.name} binary version from {folder}",
    )


def _class_names(folder: Path, spec: CifarSpec) -> tuple[str, ...]:
    meta = folder / ("batches.meta.txt" if spec.label_bytes == 1 else "fine_label_names.txt")
    if meta.exists():
        names = tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        if len(names) == spec.num_classes:
            return names
    if spec.num_classes == 10:
        return CIFAR10_CLASSES
    return tuple(str(i) for i in range(spec.num_classes))
