"""Sets in and out: other projects' distilled sets scored here, distilset's sets taken into any training loop.

``import_set(format, path, data)`` reads a set another project wrote and returns a ``SyntheticSet`` in ``data``'s
space, with an explicit training recipe and a ``provenance`` entry in ``extra`` (format, files and their SHA-256):

- ``mtt``: a directory holding MTT's ``images_best.pt`` and ``labels_best.pt`` (Cazenavette et al. 2022), and its
  learned learning rate when there (``lr_best.pt`` or ``syn_lr_best.pt``). The images are in the dataset's
  normalised space, or with ``zca=True`` in its ZCA space (this project's ZCA of the training images; MTT's own
  whitening, kornia's with eps 0.1, is the same transform up to float rounding). Recipe: MTT's evaluation, SGD
  at the learned lr with DSA, 1000 epochs, on ConvNet-3.
- ``dc``: a results file of DC, DSA or DM's released code (``res_*.pt``: ``{"data": [[images, labels], ...]}``,
  one pair per experiment; ``index`` picks one). Normalised space. Recipe: DC's protocol, with DSA for the
  ``dsa`` and ``dm`` variants (``variant``), on ConvNet-3.
- ``folder``: one sub-folder of images per class (the layout SRe2L, RDED and DD-Ranking write, e.g.
  ``new000/class000_id000.jpg``): folders named by class name, or by a class number (its digits), or else taken
  in sorted order. Images must have the dataset's size; pixels are normalised by the dataset. Hard labels; a
  ``labels.json`` beside them (as ``export_set`` writes) restores soft labels. Recipe: DC's protocol (train them
  by the teacher recipe with ``evaluate --teacher``, as their papers do).
- ``pt`` / ``npz``: a dict (``images``, ``labels``; optional ``mean`` and ``std``: the normalisation the images
  are in, mapped into the dataset's). Recipe: DC's protocol.

Every file is read without running code (``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``)
and checked before anything is written: float images of the dataset's shape, finite; labels that are class
indices of the dataset (or distributions over its classes), one per image; every class present.

``export_set(syn, format, out)`` writes ``folder`` (PNG images at real pixel range, ``CCC_name/00000.png``, and
``labels.json`` with the labels, soft ones included), ``npz`` or ``pt`` (the tensors as stored: images in the set's
normalised space, labels, the normalisation and the class names); ``import_set`` of an ``npz`` or ``pt`` export
gives the same tensors back. ``SyntheticSet.torch_dataset()`` gives a ``torch.utils.data.Dataset`` for a plain loop.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilset.data.dataset import Dataset, Normalization
from distilset.errors import DistilsetError
from distilset.files import EXPORT_LABELS
from distilset.io import write_bytes, write_json
from distilset.jsonread import load_json
from distilset.recipes import Standard
from distilset.synset import SyntheticSet

IMPORT_FORMATS = ("mtt", "dc", "folder", "pt", "npz")
EXPORT_FORMATS = ("folder", "npz", "pt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LABELS_FILE = EXPORT_LABELS
CONVNET = {"name": "convnet", "kwargs": {}, "init": "default"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_pt(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DistilsetError(f"{path} not found ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code, a damaged file, not a torch file: never run, never trusted
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DistilsetError(f"{path} is not a file of plain tensors ({first}); it cannot be imported") from e


def _tensor(obj: Any, where: str) -> torch.Tensor:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise DistilsetError(f"{where} holds {obj.dtype} values, not numbers")
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    if not isinstance(obj, torch.Tensor):
        raise DistilsetError(f"{where} is a {type(obj).__name__}, not a tensor")
    return obj.detach().cpu()


def _check(images: torch.Tensor, labels: torch.Tensor, data: Dataset, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the dataset's shape and finite; labels class indices (or distributions) of its classes, one per
    image, every class present (hard labels). Returns float32 images and int64 (or float32 soft) labels."""
    k, shape = data.num_classes, tuple(data.image_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise DistilsetError(f"{where}: images are {tuple(images.shape)}, but {data.info.name} needs (N, *{shape})")
    if not images.is_floating_point():
        raise DistilsetError(f"{where}: images are {images.dtype}, not floats")
    images = images.float()
    if not torch.isfinite(images).all():
        raise DistilsetError(f"{where}: images hold NaN or inf")
    if len(labels) != len(images):
        raise DistilsetError(f"{where}: {len(labels)} labels for {len(images)} images")
    if labels.ndim == 2:
        if labels.shape[1] != k or not labels.is_floating_point() or not torch.isfinite(labels).all():
            raise DistilsetError(
                f"{where}: soft labels must be finite floats over the {k} classes of "
                f"{data.info.name}, got {tuple(labels.shape)} {labels.dtype}"
            )
        labels = labels.float()
        hard = labels.argmax(1)
    elif labels.ndim == 1:
        if labels.is_floating_point() and (not torch.isfinite(labels).all() or not torch.equal(labels, labels.round())):
            raise DistilsetError(f"{where}: labels are {labels.dtype} values that are not class numbers")
        labels = hard = labels.long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise DistilsetError(
                f"{where}: labels run from {int(labels.min())} to {int(labels.max())}, but "
                f"{data.info.name} has classes 0..{k - 1}"
            )
    else:
        raise DistilsetError(f"{where}: labels are {tuple(labels.shape)}, neither (N,) classes nor (N, {k}) soft")
    if len(images) == 0:
        raise DistilsetError(f"{where}: no images")
    missing = sorted(set(range(k)) - set(hard.tolist())) if labels.ndim == 1 else []  # soft labels spread freely
    if missing:
        raise DistilsetError(
            f"{where}: no image of class {missing[0]} ({data.info.class_names[missing[0]]!r}); "
            f"a set for {data.info.name} needs every one of its {k} classes"
        )
    return images.contiguous(), labels.contiguous()


def _in_data_space(images: torch.Tensor, mean: Any, std: Any, data: Dataset, where: str) -> torch.Tensor:
    """Images stored in another normalisation (``mean``, ``std``), mapped into the dataset's."""
    theirs = Normalization(
        tuple(float(v) for v in _tensor(mean, f"{where} mean").flatten()),
        tuple(float(v) for v in _tensor(std, f"{where} std").flatten()),
    )
    if theirs == data.info.norm:
        return images
    if len(theirs.mean) != data.image_shape[0]:
        raise DistilsetError(
            f"{where}: mean and std have {len(theirs.mean)} channels, the images {data.image_shape[0]}"
        )
    return data.info.norm.normalize(theirs.denormalize(images))


def _make(
    data: Dataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Standard,
    provenance: dict,
    zca: bool = False,
    net: dict | None = None,
) -> SyntheticSet:
    if zca and data.zca is None:
        raise DistilsetError("the images are ZCA-whitened (`zca`), so the dataset must be loaded with ZCA too")
    syn = SyntheticSet.for_dataset(data, images, labels, f"import-{provenance['format']}", recipe=recipe)
    if not zca:
        syn.zca = None
    syn.net = dict(net or CONVNET)
    syn.extra["provenance"] = {**provenance, "imported": datetime.date.today().isoformat()}
    return syn


def import_mtt(path: Path, data: Dataset, zca: bool = False) -> SyntheticSet:
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    images = _tensor(_load_pt(directory / "images_best.pt", "MTT's images"), "images_best.pt")
    labels = _tensor(_load_pt(directory / "labels_best.pt", "MTT's labels"), "labels_best.pt")
    images, labels = _check(images, labels, data, str(directory))
    files = {
        "images_best.pt": _sha256(directory / "images_best.pt"),
        "labels_best.pt": _sha256(directory / "labels_best.pt"),
    }
    lr = 0.01
    for name in ("lr_best.pt", "syn_lr_best.pt"):
        if (directory / name).is_file():
            value = _tensor(_load_pt(directory / name, "MTT's learned lr"), name)
            if value.numel() != 1 or not torch.isfinite(value).all() or not 0 < float(value) <= 10:
                raise DistilsetError(f"{directory / name}: the learned lr must be one number in (0, 10], got {value}")
            lr, files[name] = float(value), _sha256(directory / name)
            break
    recipe = Standard(lr=lr, dsa=data.info.dsa_strategy, epochs=1000)
    return _make(data, images, labels, recipe, {"format": "mtt", "path": str(directory), "files": files}, zca)


def import_dc(path: Path, data: Dataset, index: int = 0, variant: str = "dc") -> SyntheticSet:
    if variant not in ("dc", "dsa", "dm"):
        raise DistilsetError(f"`variant` must be dc, dsa or dm, got {variant!r}")
    obj = _load_pt(Path(path), "DC/DSA/DM results")
    runs = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(runs, (list, tuple)) or not runs:
        raise DistilsetError(f"{path} has no 'data' list of [images, labels] pairs (DC/DSA/DM's res_*.pt)")
    if not 0 <= index < len(runs):
        raise DistilsetError(f"`index` {index} is outside the {len(runs)} experiments in {path}")
    pair = runs[index]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise DistilsetError(f"{path}: experiment {index} is not an [images, labels] pair")
    images, labels = _check(_tensor(pair[0], "images"), _tensor(pair[1], "labels"), data, f"{path} [{index}]")
    recipe = Standard(dsa=data.info.dsa_strategy if variant != "dc" else None)
    provenance = {
        "format": "dc",
        "variant": variant,
        "index": index,
        "path": str(path),
        "files": {Path(path).name: _sha256(Path(path))},
    }
    return _make(data, images, labels, recipe, provenance)


def _class_of(name: str, data: Dataset, position: int, numbered: bool) -> int:
    names = list(data.info.class_names)
    if name in names:
        return names.index(name)
    if numbered:
        return int(re.findall(r"\d+", name)[0])
    return position


def import_folder(path: Path, data: Dataset) -> SyntheticSet:
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DistilsetError(f"{root} is not a directory of class folders")
    folders = sorted(d for d in root.iterdir() if d.is_dir())
    if not folders:
        raise DistilsetError(f"{root} holds no class folders (expected ROOT/CLASS/image.png)")
    numbered = not all(f.name in data.info.class_names for f in folders) and all(
        re.search(r"\d", f.name) for f in folders
    )
    c, h, w = data.image_shape
    images, labels, names = [], [], []
    for position, folder in enumerate(folders):
        k = _class_of(folder.name, data, position, numbered)
        if not 0 <= k < data.num_classes:
            raise DistilsetError(f"{folder}: class {k} is outside {data.info.name}'s 0..{data.num_classes - 1}")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise DistilsetError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.draft(None, None)
                    arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
            except (OSError, ValueError, SyntaxError) as e:
                raise DistilsetError(f"{f} is not a readable image ({e})") from e
            if arr.shape[:2] != (h, w):
                raise DistilsetError(f"{f} is {arr.shape[1]}x{arr.shape[0]}, but {data.info.name} is {w}x{h}")
            images.append(torch.from_numpy(arr.reshape(h, w, c)).permute(2, 0, 1))
            labels.append(k)
            names.append(f"{folder.name}/{f.name}")
    x = data.info.norm.normalize(torch.stack(images))
    y: torch.Tensor = torch.tensor(labels)
    provenance: dict[str, Any] = {"format": "folder", "path": str(root), "images": len(names)}
    labels_file = root / LABELS_FILE
    if labels_file.is_file():  # an export of ours: its item order and labels (soft ones too)
        stored = load_json(labels_file)
        listed = stored.get("files") if isinstance(stored, dict) else None
        stored_labels = stored.get("labels") if isinstance(stored, dict) else None
        if (
            not isinstance(listed, list)
            or not all(isinstance(f, str) for f in listed)
            or sorted(listed) != sorted(names)
            or not isinstance(stored_labels, list)
            or len(stored_labels) != len(names)
        ):
            raise DistilsetError(f"{labels_file} lists other files than the folders hold; delete it or fix it")
        x = x[torch.tensor([names.index(f) for f in listed])]
        try:
            y = torch.tensor(stored["labels"], dtype=torch.float32 if stored.get("soft") else torch.int64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DistilsetError(
                f"{labels_file}: its labels are not numbers of one shape ({e}); fix or delete it"
            ) from e
        provenance["files"] = {LABELS_FILE: _sha256(labels_file)}
    x, y = _check(x, y, data, str(root))
    return _make(data, x, y, Standard(), provenance)


def import_tensors(path: Path, data: Dataset, fmt: str) -> SyntheticSet:
    path = Path(path)
    if fmt == "npz":
        if not path.is_file():
            raise DistilsetError(f"{path} not found")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an npz archive of named arrays")
            with loaded as f:
                obj = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, TypeError) as e:
            raise DistilsetError(f"{path} is not a readable npz of plain arrays ({str(e)[:160]})") from e
    else:
        obj = _load_pt(path, "tensors")
        if isinstance(obj, (list, tuple)) and len(obj) == 2:
            obj = {"images": obj[0], "labels": obj[1]}
    if not isinstance(obj, dict):
        raise DistilsetError(f"{path} holds a {type(obj).__name__}; expected a dict with 'images' and 'labels'")
    key_x = next((k for k in ("images", "x") if k in obj), None)
    key_y = next((k for k in ("labels", "y") if k in obj), None)
    if key_x is None or key_y is None:
        raise DistilsetError(f"{path} needs 'images' and 'labels' (or 'x' and 'y'); it holds {sorted(obj)}")
    images = _tensor(obj[key_x], f"{path} {key_x}")
    if "mean" in obj and "std" in obj and images.is_floating_point():
        images = _in_data_space(images.float(), obj["mean"], obj["std"], data, str(path))
    images, labels = _check(images, _tensor(obj[key_y], f"{path} {key_y}"), data, str(path))
    return _make(
        data, images, labels, Standard(), {"format": fmt, "path": str(path), "files": {path.name: _sha256(path)}}
    )


def import_set(
    fmt: str, path: str | Path, data: Dataset, index: int = 0, variant: str = "dc", zca: bool = False
) -> SyntheticSet:
    """Read a set another project wrote (the module docstring lists the formats) into ``data``'s space."""
    if fmt not in IMPORT_FORMATS:
        raise DistilsetError(f"unknown import format {fmt!r}; choose from {', '.join(IMPORT_FORMATS)}")
    if zca and fmt != "mtt":
        raise DistilsetError("`zca` applies to MTT's ZCA-whitened images only")
    if fmt == "mtt":
        return import_mtt(Path(path), data, zca=zca)
    if fmt == "dc":
        return import_dc(Path(path), data, index=index, variant=variant)
    if fmt == "folder":
        return import_folder(Path(path), data)
    return import_tensors(Path(path), data, fmt)


def _folder_name(c: int, name: str) -> str:
    return f"{c:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'class'}"


def export_set(syn: SyntheticSet, fmt: str, out: str | Path) -> Path:
    """Write ``syn`` as ``folder`` (PNG at pixel range and labels.json), ``npz`` or ``pt`` (module docstring)."""
    if fmt not in EXPORT_FORMATS:
        raise DistilsetError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if fmt != "folder" and (out.exists() or out.is_symlink()):
        raise DistilsetError(f"{out} exists; give a new file name (export never replaces a file)")
    if fmt != "folder" and syn.zca is not None:
        raise DistilsetError("this set is ZCA-whitened and npz/pt carry no ZCA matrix: export it as folder (pixels)")
    tensors = {
        "images": syn.images.detach().cpu().contiguous(),
        "labels": syn.labels.detach().cpu().contiguous(),
        "mean": torch.tensor(syn.norm.mean, dtype=torch.float64),
        "std": torch.tensor(syn.norm.std, dtype=torch.float64),
    }
    if fmt == "pt":
        buf = io.BytesIO()
        torch.save({**tensors, "class_names": list(syn.class_names)}, buf)
        return write_bytes(out, buf.getvalue())
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{k: v.numpy() for k, v in tensors.items()}, class_names=np.array(syn.class_names, dtype=str))
        return write_bytes(out, buf.getvalue())
    if syn.images.ndim != 4:
        raise DistilsetError("this set holds embeddings, not images: export it as npz or pt")
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise DistilsetError(f"{out} exists and is not an empty directory; give a new directory for the images")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)  # mkdtemp's 0700 would outlive the rename
    try:
        _write_folder(syn, staging)
        if out.exists():
            out.rmdir()  # the empty directory given
        os.replace(staging, out)  # all of it appears at once: an interruption leaves no half folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_folder(syn: SyntheticSet, out: Path) -> None:
    from PIL import Image

    pixels = syn.to_pixels()
    hard = syn.hard_labels()
    files = []
    for i, (x, k) in enumerate(zip(pixels, hard.tolist(), strict=True)):
        arr = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        name = f"{_folder_name(k, syn.class_names[k])}/{i:05d}.png"
        write_bytes(out / name, buf.getvalue())
        files.append(name)
    labels = syn.labels.tolist()
    write_json(
        out / LABELS_FILE, {"classes": list(syn.class_names), "files": files, "labels": labels, "soft": syn.soft}
    )
