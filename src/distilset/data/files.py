"""User datasets: ``npz:PATH`` (arrays) and ``folder:PATH`` (one sub-folder of images per class).

npz keys: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``, ``class_names``. Images may be
(N, H, W), (N, H, W, C) or (N, C, H, W), uint8 in 0..255 or float in [0, 1]. Without a test split, 20 % of
each class is held out (stratified, seed 0). A folder may hold ``train/`` and ``test/`` sub-folders, each
with class sub-folders; otherwise its class sub-folders are split the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distilset.data.dataset import Dataset, from_arrays
from distilset.data.split import stratified_split
from distilset.errors import DatasetNotFoundError, DistilsetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return np.transpose(x, (0, 3, 1, 2))
        return x
    raise DistilsetError(f"{where}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W), got shape {x.shape}")


def _scale(x: np.ndarray) -> float:
    return 255.0 if x.dtype == np.uint8 or float(x.max(initial=0)) > 1.0 else 1.0


def load_npz(path: str) -> Dataset:
    p = Path(path)
    if not p.exists():
        raise DatasetNotFoundError(f"npz:{path}: file not found")
    try:
        arrays = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DistilsetError(f"npz:{path}: cannot read ({e}); it must be a numpy .npz without pickled objects") from e
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DistilsetError(f"npz:{path}: missing key(s) {missing}; expected x_train, y_train[, x_test, y_test]")
    x = _to_nchw(arrays["x_train"], f"npz:{path}")
    y = arrays["y_train"].astype(np.int64).reshape(-1)
    if "x_test" in arrays and "y_test" in arrays:
        tx, ty = _to_nchw(arrays["x_test"], f"npz:{path}"), arrays["y_test"].astype(np.int64).reshape(-1)
    else:
        train, test = stratified_split(y, 0.2, seed=0)
        x, tx, y, ty = x[train], x[test], y[train], y[test]
    names = tuple(str(n) for n in arrays["class_names"]) if "class_names" in arrays else None
    scale = _scale(x)
    return from_arrays(f"npz:{path}", x, y, tx, ty, class_names=names, scale=scale, description=f"arrays from {p}")


def _read_class_folders(root: Path) -> tuple[list[np.ndarray], list[int], tuple[str, ...]]:
    from PIL import Image

    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise DistilsetError(f"folder:{root}: no class sub-folders found (expected ROOT/CLASS/image.png)")
    images, labels, size = [], [], None
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(f) as im:
                im = im.convert("L") if im.mode in ("L", "1", "I;16", "P") and im.mode != "P" else im.convert("RGB")
                arr = np.asarray(im)
            if size is None:
                size = arr.shape
            if arr.shape != size:
                raise DistilsetError(
                    f"folder:{root}: {f} has shape {arr.shape}, others {size}; resize all images to one size"
                )
            images.append(arr)
            labels.append(label)
    if not images:
        raise DistilsetError(f"folder:{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders")
    return images, labels, classes


def load_folder(path: str) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise DatasetNotFoundError(f"folder:{path}: directory not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        xi, yi, names = _read_class_folders(root / "train")
        ti, tyi, test_names = _read_class_folders(root / "test")
        if test_names != names:
            raise DistilsetError(f"folder:{path}: train classes {names} and test classes {test_names} differ")
        x, y, tx, ty = np.stack(xi), np.array(yi), np.stack(ti), np.array(tyi)
    else:
        xi, yi, names = _read_class_folders(root)
        x_all, y_all = np.stack(xi), np.array(yi)
        train, test = stratified_split(y_all, 0.2, seed=0)
        x, y, tx, ty = x_all[train], y_all[train], x_all[test], y_all[test]
    x, tx = _to_nchw(x, f"folder:{path}"), _to_nchw(tx, f"folder:{path}")
    return from_arrays(f"folder:{path}", x, y, tx, ty, class_names=names, description=f"image folders in {root}")
