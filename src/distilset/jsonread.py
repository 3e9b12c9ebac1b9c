"""Reading JSON documents that arrive from disk (``synset.json``, expert manifests) and may be damaged or hostile.

``load_json`` parses with bounded nesting (a file of 100,000 nested brackets is refused, not a RecursionError),
and the field readers check a value's type and range, raising ``DistilsetError`` whose message names the field
(``mean must be a list of numbers, got 'x'``). Callers add the file and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from distilset.errors import DistilsetError

MAX_DEPTH = 32
"""Deepest nesting of lists and objects accepted; distilset's own files nest at most 6 levels."""


def load_json(path: Path, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed document; ``DistilsetError`` if it is not UTF-8 JSON or nests deeper than ``max_depth``."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError as e:
        raise DistilsetError(f"{path} is nested too deeply to be a distilset file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistilsetError(f"{path} is not valid JSON ({e})") from e
    if nesting_depth(obj) > max_depth:
        raise DistilsetError(f"{path} is nested too deeply (more than {max_depth} levels) to be a distilset file")
    return obj


def nesting_depth(obj: Any) -> int:
    """Levels of lists/objects in ``obj`` (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise DistilsetError(f"{name} must be an object (a mapping), got {_show(value)}")
    return value


def string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise DistilsetError(f"{name} must be a string, got {_show(value)}")
    return value


def whole(value: Any, name: str, low: int, high: int) -> int:
    """An int (a JSON number without fraction, not a boolean) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DistilsetError(f"{name} must be a whole number in {low}..{high}, got {_show(value)}")
    return value


def number(value: Any, name: str, low: float = -math.inf, high: float = math.inf, positive: bool = False) -> float:
    """A finite number (not a boolean) in [low, high], > 0 when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DistilsetError(f"{name} must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise DistilsetError(f"{name} must be a finite number, got {value}")
    if not low <= value <= high or (positive and value <= 0):
        bound = f"> 0 and <= {high:g}" if positive else f"in [{low:g}, {high:g}]"
        raise DistilsetError(f"{name} must be {bound}, got {value:g}")
    return float(value)


def strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DistilsetError(f"{name} must be a list of strings, got {_show(value)}")
    return value


def whole_list(value: Any, name: str, low: int, high: int) -> list[int]:
    if not isinstance(value, list):
        raise DistilsetError(f"{name} must be a list of whole numbers, got {_show(value)}")
    return [whole(v, f"{name} entries", low, high) for v in value]
