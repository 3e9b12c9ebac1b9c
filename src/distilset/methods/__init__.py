"""Distillation methods, one file each, each registering itself: ``distill(name, data, ...)``.

Importing this package imports every method module, so each one's ``register_method`` call has run.
"""

from __future__ import annotations

from distilset.methods import dc, dd, dm, frepo, kip, labels, mtt, rded, sre2l  # noqa: F401  (each registers itself)
from distilset.methods.base import Context, MethodConfig, NonFiniteError
from distilset.methods.registry import METHODS, Method, Preset, distill, get_method, list_methods, register_method

__all__ = [
    "METHODS",
    "Context",
    "Method",
    "MethodConfig",
    "NonFiniteError",
    "Preset",
    "distill",
    "get_method",
    "list_methods",
    "register_method",
]
