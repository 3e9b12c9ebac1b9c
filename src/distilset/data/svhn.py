"""SVHN (cropped digits, 32x32) from the publisher's MATLAB v5 files, read with scipy (no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distilset.data.dataset import DSA_NO_FLIP, Dataset, from_arrays
from distilset.data.download import download_verified
from distilset.errors import DatasetNotFoundError, DistilsetError

URL = "http://ufldl.stanford.edu/housenumbers/"
# torchvision's published checksums for the two files.
FILES = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def svhn_present(root: Path) -> bool:
    return all((root / "svhn" / f).exists() for f in FILES)


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for a corrupt file
        raise DistilsetError(f"{path}: not a readable SVHN .mat file ({e}); re-fetch it") from e
    x = np.transpose(mat["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
    y = mat["y"].reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return x, y


def load_svhn(root: Path, download: bool = False) -> Dataset:
    base = root / "svhn"
    if download:
        for name, md5 in FILES.items():
            download_verified(URL + name, base / name, md5)
    if not svhn_present(root):
        raise DatasetNotFoundError(
            f"svhn: {' and '.join(FILES)} not found in {base}; place them there, pass --data-root, or use --download"
        )
    train_x, train_y = _read_mat(base / "train_32x32.mat")
    test_x, test_y = _read_mat(base / "test_32x32.mat")
    return from_arrays(
        "svhn",
        train_x,
        train_y,
        test_x,
        test_y,
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        dsa_strategy=DSA_NO_FLIP,
        description=f"SVHN cropped digits from {base}",
    )
