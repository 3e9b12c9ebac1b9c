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


MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image (width x height) a folder dataset may hold; larger ones are refused from their header, before
any pixel is decoded (PIL's own decompression-bomb limit is 89 M pixels, far beyond any distillation input)."""


def _read_npz(p: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of the file, read without pickle (object arrays are refused, never unpickled)."""
    try:
        with open(p, "rb") as fh:  # our own handle: numpy leaks its own when the zip is damaged
            arrays = np.load(fh, allow_pickle=False)
            if not hasattr(arrays, "files"):
                raise DistilsetError(f"{where}: holds a single array, not named arrays; save it with np.savez")
            with arrays:
                return {k: arrays[k] for k in arrays.files}
    except DistilsetError:
        raise
    except Exception as e:  # numpy and zipfile raise many kinds for a damaged or hostile file
        raise DistilsetError(
            f"{where}: cannot read ({e}); it must be a numpy .npz of plain numeric arrays (object arrays would "
            "need pickle, which is never loaded)"
        ) from e


def _npz_images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DistilsetError(
            f"{where}: {key} must hold numbers (uint8 0..255 or floats in [0, 1]), got dtype {x.dtype}; convert it"
        )
    if x.ndim < 1 or len(x) == 0:
        raise DistilsetError(f"{where}: {key} holds no images (shape {x.shape}); it needs (N, H, W[, C]) with N >= 1")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DistilsetError(f"{where}: {key} contains NaN or inf pixels; fix or drop those images")
    return _to_nchw(x, f"{where}: {key}")


def _npz_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    """Whole-number class indices, one per image of the matching x array."""
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1:] == (1,) else y
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise DistilsetError(
            f"{where}: {key} must be a vector of whole-number class indices, got dtype {y.dtype} shape {y.shape}"
        )
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DistilsetError(f"{where}: {key} must be whole-number class indices, got fractional or NaN values")
    if len(y) != n:
        raise DistilsetError(f"{where}: {n} images in x but {len(y)} labels in {key}; give one label per image")
    if len(y) and (y.min() < 0 or y.max() >= 2**31):
        low, high = int(y.min()), int(y.max())
        raise DistilsetError(f"{where}: {key} holds label {low if low < 0 else high}; labels are class indices 0..K-1")
    return y.astype(np.int64)


def load_npz(path: str) -> Dataset:
    p, where = Path(path), f"npz:{path}"
    if not p.is_file():
        raise DatasetNotFoundError(f"{where}: file not found")
    arrays = _read_npz(p, where)
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DistilsetError(f"{where}: missing key(s) {missing}; expected x_train, y_train[, x_test, y_test]")
    x = _npz_images(arrays["x_train"], "x_train", where)
    y = _npz_labels(arrays["y_train"], "y_train", len(x), where)
    if "x_test" in arrays and "y_test" in arrays:
        tx = _npz_images(arrays["x_test"], "x_test", where)
        ty = _npz_labels(arrays["y_test"], "y_test", len(tx), where)
        if len(y) and len(ty) and ty.max() > y.max() and "class_names" not in arrays:
            raise DistilsetError(
                f"{where}: y_test holds label {int(ty.max())} but y_train only goes to {int(y.max())}; every class "
                "needs training images"
            )
    else:
        train, test = stratified_split(y, 0.2, seed=0)
        x, tx, y, ty = x[train], x[test], y[train], y[test]
    names = None
    if "class_names" in arrays:
        if arrays["class_names"].ndim != 1 or arrays["class_names"].dtype.kind not in "US":
            raise DistilsetError(f"{where}: class_names must be a vector of strings, got {arrays['class_names'].dtype}")
        names = tuple(str(n) for n in arrays["class_names"])
    scale = _scale(x)
    return from_arrays(where, x, y, tx, ty, class_names=names, scale=scale, description=f"arrays from {p}")


def _read_image(f: Path, root: Path) -> np.ndarray:
    """One image as an (H, W) or (H, W, 3) array; its size is checked from the header before decoding."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by our own bound
            with Image.open(f) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DistilsetError(
                        f"folder:{root}: {f} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed; "
                        "resize the images to the size you distil at"
                    )
                im = im.convert("L") if im.mode in ("L", "1", "I;16") else im.convert("RGB")
                return np.asarray(im)
    except Image.DecompressionBombError as e:
        raise DistilsetError(
            f"folder:{root}: {f} is larger than {MAX_IMAGE_PIXELS:,} pixels ({e}); resize the images"
        ) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # not an image, truncated, damaged
        raise DistilsetError(f"folder:{root}: {f} is not a readable image ({e}); replace or remove it") from e


def _read_class_folders(root: Path) -> tuple[list[np.ndarray], list[int], tuple[str, ...]]:
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not classes:
        raise DistilsetError(f"folder:{root}: no class sub-folders found (expected ROOT/CLASS/image.png)")
    images, labels, size = [], [], None
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            arr = _read_image(f, root)
            if size is None:
                size = arr.shape
            if arr.shape != size:
                raise DistilsetError(
                    f"folder:{root}: {f} has shape {arr.shape}, others {size}; resize all images to one size"
                )
            images.append(arr)
            labels.append(label)
        if not labels or labels[-1] != label:
            raise DistilsetError(
                f"folder:{root}: class folder {name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add "
                "its images or remove the folder"
            )
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
