"""The one atomic file writer: every file distilset writes goes through ``atomic_write``.

A file is written into a fresh temporary file created by ``tempfile.mkstemp`` in the destination's own
directory (a new random name, opened with O_EXCL, so a planted file or symlink is never followed), flushed
and fsync'ed, then renamed over the destination. Readers see the old file or the new one, never half of
one; a failure (or a writer that raises, e.g. a failed checksum) leaves the destination untouched and
removes the temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills an open binary temporary file, which then replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode a plain open would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_together(files: dict[Path, bytes]) -> None:
    """Several files that belong together (a set and its teacher and views): each is written and fsync'ed under a
    fresh temporary name first, then all are renamed into place in the given order (the one that lists the others
    last), so an interruption before the renames changes nothing, and a reader never meets new companions beside
    an old listing for longer than the renames take."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file, written atomically (``safetensors.torch.save`` gives the bytes)."""
    from safetensors.torch import save

    return write_bytes(path, save(tensors, metadata=metadata))


def load_torch(path: str | os.PathLike) -> Any:
    """A checkpoint written by ``save_torch``, read with ``weights_only=True`` (tensors and plain values: a pickle
    that would run code is refused); an unreadable file is a ``DistilsetError`` that says to delete it, without
    repeating PyTorch's advice to turn ``weights_only`` off."""
    import torch

    from distilset.errors import DistilsetError

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        text = str(e)
        if "weights only load failed" in text.lower() or "weights_only" in text:  # PyTorch's advice is to trust it
            reason = "it is not a checkpoint of plain tensors and values, or it is damaged"
        else:
            reason = text.splitlines()[0][:160] if text else type(e).__name__
        raise DistilsetError(f"checkpoint {path} is unreadable ({reason}); delete it to start over") from e


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically (checkpoints: tensors and plain values, read back with weights_only)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
