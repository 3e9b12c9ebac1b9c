"""Distillation methods, one file each, each registering itself: ``distill(name, data, ...)``.

Importing this package imports every method module, so each one's ``register_method`` call has run.
"""

from __future__ import annotations

from distilset.methods import dc, dd, dm, frepo, kip, labels, mtt, rded, sre2l  # noqa: F401  (each registers itself)
from distilset.methods.base import Context, Distiller, MethodConfig, NonFiniteError, RunOptions
from distilset.methods.registry import METHODS, Method, Preset, get_method, list_methods, register_method
from distilset.methods.runner import distill

__all__ = [
    "METHODS",
    "Context",
    "Distiller",
    "Method",
    "MethodConfig",
    "NonFiniteError",
    "Preset",
    "RunOptions",
    "distill",
    "get_method",
    "list_methods",
    "register_method",
]
