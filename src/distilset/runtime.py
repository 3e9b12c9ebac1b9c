"""How distilset uses the machine it runs on: the C allocator, and the numeric precision of network training.

**Allocator.** glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``. A training step whose activations are larger (a width-128 ConvNet on 100
images at 32x32: 52 MB per layer output; a 1024-image test batch: ten times that) then faults every page of
every such tensor in again, every step: the kernel zeroes the memory and the step waits. ``tune_allocator`` sets
glibc's ``M_MMAP_MAX`` to 0 (no mmap: large blocks come from the heap and are reused) and keeps up to 1 GiB of
freed memory (``M_TRIM_THRESHOLD``) instead of returning it at once, so the process's resident memory stays near
its peak instead of falling between steps. ``benchmarks/eval_speed.py`` (row ``levers``) measures the effect. It
is called by the command line, ``distill`` and ``fit``; ``DISTILSET_ALLOCATOR=system`` leaves the allocator
alone. Other C libraries (musl, macOS) are left alone too.

**Precision.** ``precision`` of ``fit``, ``accuracy`` and ``evaluate``: ``float32``, ``bfloat16`` (the forward
pass and loss under ``torch.autocast``; weights, gradients and optimiser state stay float32) or ``auto``:
bfloat16 on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX), float32 elsewhere (CUDA included: not
measured yet). The evaluation harness defaults to ``auto`` because of a measured accuracy-parity row
(``benchmarks/eval_speed.py``, row ``eval-parity``: the same sets, nets and seeds, float32 against bfloat16, the
final accuracies within the repeats' spread); training that other computations depend on (MTT's experts,
teachers, the replay of learned steps) stays float32 unless asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Literal

import torch

from distilset.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16")
Precision = Literal["auto", "float32", "bfloat16"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEPT_FREE_BYTES = 1 << 30
"""Freed heap memory glibc keeps for reuse before it returns any to the system (``M_TRIM_THRESHOLD``)."""
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_tuned = False


def _mallopt():
    """glibc's ``mallopt``, or None under another C library."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Keep large blocks on glibc's heap for reuse (see the module docstring). True when the allocator is tuned
    (now or before), False when left alone (``DISTILSET_ALLOCATOR=system``, or not glibc)."""
    global _tuned
    if not _tuned and os.environ.get("DISTILSET_ALLOCATOR") != "system":
        mallopt = _mallopt()
        _tuned = bool(mallopt) and bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES))
    return _tuned


def system_allocator() -> None:
    """Undo ``tune_allocator``: glibc's defaults again (a benchmark's baseline arm; set
    ``DISTILSET_ALLOCATOR=system`` too, or the next ``fit`` tunes it again)."""
    global _tuned
    mallopt = _mallopt()
    if mallopt:
        for option, value in _GLIBC_DEFAULTS.items():
            mallopt(option, value)
    _tuned = False


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16 among its flags; Linux's
    ``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``float32`` or ``bfloat16``: ``auto`` is bfloat16 on a CPU with native bfloat16, else float32."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bfloat16" if torch.device(device).type == "cpu" and native_bfloat16() else "float32"


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """The context a forward pass and its loss run in: ``torch.autocast`` to bfloat16, or nothing for float32."""
    if resolve_precision(precision, device) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
