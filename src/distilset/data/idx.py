"""Reader for the IDX format of MNIST, Fashion-MNIST and KMNIST (plain or gzip-compressed).

Format (LeCun): two zero bytes, a type code, the number of dimensions, one big-endian uint32 per dimension,
then the raw array in C order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from distilset.errors import DistilsetError

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DistilsetError(f"cannot read IDX file {path}: {e}; re-fetch the file") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DistilsetError(f"{path} is not an IDX file (bad magic number); re-fetch the file")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DistilsetError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DistilsetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DistilsetError(
            f"{path}: IDX body has {len(raw) - header} bytes, header promises {expected} for shape {shape}; "
            "the file is truncated or corrupt, re-fetch it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as IDX (gzip if the name ends in .gz); used for fixtures and exports."""
    path = Path(path)
    codes = {v.newbyteorder(">") if v.itemsize > 1 else v: k for k, v in _DTYPES.items()}
    dt = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dt not in codes:
        raise DistilsetError(f"cannot write dtype {array.dtype} as IDX")
    body = struct.pack(">BBBB", 0, 0, codes[dt], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=dt).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(body)
