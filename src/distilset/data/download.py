"""Optional, verified downloads: only when the user asks (``download=True``), always checksum-checked.

The checksums are the ones the publishers list (CIFAR) or that torchvision ships for each file (MNIST,
KMNIST, SVHN). A file that does not match is deleted and reported; nothing unverified is ever read.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from distilset.errors import ChecksumError, DistilsetError
from distilset.io import atomic_write

MIRROR_ENV = "DISTILSET_MIRROR"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` atomically and check its MD5; an existing matching file is kept."""
    dest = Path(dest)
    if dest.exists() and md5sum(dest) == md5:
        return dest
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]

    def fetch(out) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except OSError as e:
            raise DistilsetError(
                f"download of {url} failed: {e}; check the network or place the file at {dest} yourself"
            ) from e
        got = digest.hexdigest()
        if got != md5:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {got}; the file was deleted. "
                "Retry, or fetch it from the publisher and place it at " + str(dest)
            )

    # Written to a private temporary file and renamed only once the checksum matched.
    return atomic_write(dest, fetch)
