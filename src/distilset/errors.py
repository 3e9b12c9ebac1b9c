"""User-facing errors: each message names the problem and how to fix it.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DistilsetError(Exception):
    """Base class for errors caused by input the user can fix (bad option, missing file, corrupt set)."""


class DatasetNotFoundError(DistilsetError):
    """A dataset's files are missing; the message says which package, path or option provides them."""


class ChecksumError(DistilsetError):
    """A downloaded file does not match the checksum its publisher lists."""


class SynsetFormatError(DistilsetError):
    """A saved SyntheticSet is missing, malformed or from an unsupported format version."""
