"""User-facing errors: each message names the problem and how to fix it.

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps its traceback.
Messages name options in backticks (`` `lr_img` must be > 0``): ``str(error)`` shows the API name
(``lr_img must be > 0``), and ``render(flags)`` the command-line flag (``--lr-img must be > 0``), so a check is
written once, in the config, and reads right in both places.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_OPTION = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class DistilsetError(Exception):
    """Base class for errors caused by input the user can fix (bad option, missing file, corrupt set)."""

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with each `name` in backticks shown as its flag (when ``flags`` knows it), else bare."""
        text = str(self.args[0]) if self.args else ""
        return _OPTION.sub(lambda m: (flags or {}).get(m.group(1), m.group(1)), text)

    def __str__(self) -> str:
        return self.render()


class ConfigError(DistilsetError):
    """An option value is invalid (wrong type, outside its choices, or breaks a rule of its config)."""


class DatasetNotFoundError(DistilsetError):
    """A dataset's files are missing; the message says which package, path or option provides them."""


class ChecksumError(DistilsetError):
    """A downloaded file does not match the checksum its publisher lists."""


class SynsetFormatError(DistilsetError):
    """A saved SyntheticSet is missing, malformed or from an unsupported format version."""


class Interrupted(DistilsetError):
    """A run stopped by SIGINT/SIGTERM after saving its state; the CLI exits with status 130."""
