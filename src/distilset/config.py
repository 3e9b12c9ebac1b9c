"""Typed option sets: the base of every method config, training recipe and expert config.

A config is a frozen dataclass. Each field is one option: its type (``int``, ``float``, ``str``, ``bool``,
a ``Literal[...]`` of choices, ``X | None``, fixed or variadic tuples, ``dict``), its default, and a one-line
doc written as a string literal right under the field (an attribute docstring). The command line is
generated from exactly that (``distilset.cli``), so the help, the choices and the checks are written once.

Checks live in the config, in API terms:
- generic ones, from the types, run for every field in ``__post_init__`` (a Literal value outside its
  choices, an int that is not an int, a missing required value);
- ``check()`` holds the config's own rules ("must be > 0", "needs ... at least ...");
- ``resolve(data)`` fills the fields left to ``None`` that the field's metadata marks ``auto`` from the
  dataset (input size, classes, training-set size) and checks what needs the data; it returns the resolved
  config and one reason per resolved field, which the CLI prints and the set stores.

Error messages name fields in backticks (`` `lr_img` must be > 0``): the API shows the field name, the
command line the flag (``--lr-img must be > 0``); see ``DistilsetError.render``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import os
import textwrap
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

from distilset.errors import ConfigError

# Field metadata keys: AUTO marks a None default resolved from the dataset; FLAG overrides the flag name;
# CHOICES is a callable giving the allowed values at run time (e.g. the registered nets); REQUIRED_FLAG marks an
# option the API may leave out but the command line must give (``distill --out``); OLD_NAMES lists earlier names of
# a field, still accepted (with a deprecation warning) for one release.
AUTO, FLAG, CHOICES, REQUIRED_FLAG, OLD_NAMES = "auto", "flag", "choices", "required_flag", "old_names"


def auto(doc_default: str = "from the dataset", **kw) -> Any:
    """A field left to ``None`` that ``resolve`` fills; ``doc_default`` says how, for the help."""
    return dataclasses.field(default=None, metadata={AUTO: doc_default, **kw})


@dataclass(frozen=True)
class FieldSpec:
    """What the type annotation of one field says, in the terms the CLI and the checks need."""

    name: str
    base: type  # int, float, str, bool, tuple, dict
    optional: bool
    choices: tuple | None
    nargs: int | str | None  # tuples: their length, or "+"
    elem: type | None  # tuples: the element type
    doc: str
    auto: str | None
    flag: str
    default: Any
    required_flag: bool = False
    old_names: tuple[str, ...] = ()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(tp)):
            return args[0], True
    return tp, False


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of ``cls`` and its dataclass bases: the string right under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def field_specs(cls: type) -> tuple[FieldSpec, ...]:
    """One ``FieldSpec`` per field of the config class ``cls``."""
    hints = typing.get_type_hints(cls)
    docs = {**field_docs(cls), **getattr(cls, "FIELD_DOCS", {})}
    autos = getattr(cls, "AUTO_DOCS", {})
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        choices, nargs, elem = None, None, None
        if get_origin(tp) is Literal:
            choices = get_args(tp)
            base = type(choices[0])
        elif get_origin(tp) is tuple:
            args = get_args(tp)
            base, elem = tuple, args[0]
            nargs = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        elif get_origin(tp) is dict or tp is dict:
            base = dict
        elif tp in (int, float, str, bool, Path):
            base = tp
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {tp!r}")
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        specs.append(
            FieldSpec(
                name=f.name,
                base=base,
                optional=optional,
                choices=choices,
                nargs=nargs,
                elem=elem,
                doc=docs.get(f.name, ""),
                auto=autos.get(f.name, f.metadata.get(AUTO)) if f.metadata.get(AUTO) is not None else None,
                flag=f.metadata.get(FLAG) or flag_of(f.name),
                default=default,
                required_flag=bool(f.metadata.get(REQUIRED_FLAG)),
                old_names=tuple(f.metadata.get(OLD_NAMES, ())),
            )
        )
    return tuple(specs)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def runtime_choices(cls: type, name: str) -> tuple | None:
    """Choices of a field known only at run time (e.g. registered net names), or its Literal choices."""
    for f in dataclasses.fields(cls):
        if f.name == name and CHOICES in f.metadata:
            return tuple(f.metadata[CHOICES]())
    spec = next((s for s in field_specs(cls) if s.name == name), None)
    return spec.choices if spec else None


SEED_MAX = 2**62
"""Seeds are 0 .. 2**62: runs derive further seeds by adding small offsets, which must stay valid seeds."""


def check_seed(seed: Any) -> int:
    """``seed`` as an int, or a ConfigError naming the allowed range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"`seed` must be an integer from 0 to 2**62, got {seed!r}")
    return seed


@dataclass(frozen=True)
class Config:
    """Base of every option set: generic type checks, then ``check()``; ``resolve(data)`` fills auto fields.

    A subclass may word an inherited field for itself: ``FIELD_DOCS`` replaces fields' docs, ``AUTO_DOCS`` how their
    ``auto`` default is chosen (e.g. a mixin's ``net``: "the network whose gradients are matched")."""

    FIELD_DOCS: ClassVar[Mapping[str, str]] = {}
    AUTO_DOCS: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's ``resolve`` marks the config it returns as resolved (``resolved``)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("resolve")
        if own is not None and not getattr(own, "_marks", False):

            @functools.wraps(own)
            def resolve(self, data: Any) -> tuple[Config, dict[str, str]]:
                cfg, notes = own(self, data)
                object.__setattr__(cfg, "_resolved", True)
                return cfg, notes

            resolve._marks = True
            cls.resolve = resolve

    def __post_init__(self) -> None:
        for spec in field_specs(type(self)):
            object.__setattr__(self, spec.name, _coerce(spec, getattr(self, spec.name)))
        self.check()

    def check(self) -> None:
        """The config's own rules; raise ``ConfigError`` with fields in backticks."""

    def resolve(self, data: Any) -> tuple[Config, dict[str, str]]:
        """Fill the ``auto`` fields from ``data``; return the resolved config and a reason per filled field."""
        return self, {}

    # ---- helpers for check() and resolve() ------------------------------------------------------------
    def require_finite(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"`{name}` must be a finite number, got {value}")

    def require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # inf would train to NaN, or not at all
                raise ConfigError(f"`{name}` must be a finite number > 0, got {value}")
            if value is not None and not value > 0:
                raise ConfigError(f"`{name}` must be > 0, got {value}")

    def require_at_most(self, high: int | float, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value <= high:
                raise ConfigError(f"`{name}` must be <= {high:g}, got {value}")

    def require_at_least(self, low: int | float, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and not value >= low:
                raise ConfigError(f"`{name}` must be >= {low}, got {value}")

    def fill(self, **values: tuple[Any, str]) -> tuple[Config, dict[str, str]]:
        """This config with each auto field that is still ``None`` set to ``value``; ``{field: reason}``."""
        chosen = {k: v for k, v in values.items() if getattr(self, k) is None}
        notes = {k: reason for k, (_, reason) in chosen.items()}
        return dataclasses.replace(self, **{k: v for k, (v, _) in chosen.items()}), notes

    def to_json(self) -> dict:
        return {k: _json_value(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, obj: dict) -> Config:
        """The config a stored ``to_json`` describes (earlier names of a field read as its name; unknown keys,
        written by a newer release, ignored)."""
        obj = renamed(cls, obj, warn=False)
        names = {s.name for s in field_specs(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    @property
    def resolved(self) -> bool:
        """Whether this config is what ``resolve(data)`` returned (a config made by hand, or changed since, is not:
        its ``auto`` fields may still be ``None``)."""
        return getattr(self, "_resolved", False) or not any(s.auto is not None for s in field_specs(type(self)))

    def settings_lines(self, notes: Mapping[str, str]) -> list[str]:
        """Lines for the start of a run: every setting, then why each resolved one has its value."""
        items = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.to_json().items()]
        lines, line = [], " "
        for item in items:
            if len(line) + len(item) > 110:
                lines.append(line)
                line = " "
            line += " " + item
        lines.append(line)
        lines += [f"  auto {k}: {why}" for k, why in notes.items()]
        return lines


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def renamed(cls: type, options: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """``options`` with each earlier name of a field of ``cls`` (its ``OLD_NAMES``) replaced by the field's name,
    with a ``DeprecationWarning`` per old name used (``warn``); both names at once are refused."""
    old = {o: s.name for s in field_specs(cls) for o in s.old_names}
    out = dict(options)
    for name in [k for k in out if k in old]:
        new = old[name]
        if new in out:
            raise ConfigError(f"`{name}` is the old name of `{new}`; give only `{new}`")
        if warn:
            warnings.warn(
                f"`{name}` is now `{new}`; the old name goes in the next release", FutureWarning, stacklevel=3
            )
        out[new] = out.pop(name)
    return out


def _coerce(spec: FieldSpec, value: Any) -> Any:
    """Check ``value`` against the field's type (and coerce JSON shapes: lists to tuples, ints to floats)."""
    name = spec.name
    if value is None:
        if spec.optional or spec.auto is not None:
            return None
        raise ConfigError(f"`{name}` must be set")
    if spec.choices is not None:
        if value not in spec.choices:
            raise ConfigError(f"`{name}` must be one of {', '.join(map(str, spec.choices))}; got {value!r}")
        return value
    if spec.base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{name}` must be true or false, got {value!r}")
        return value
    if spec.base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{name}` must be a whole number, got {value!r}")
        return value
    if spec.base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{name}` must be a number, got {value!r}")
        return float(value)
    if spec.base is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"`{name}` must be a path, got {value!r}")
        if not str(value):  # Path("") would be the current directory
            raise ConfigError(f"`{name}` is empty; give the directory's name (use . for the current directory)")
        return Path(value)
    if spec.base is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string, got {value!r}")
        return value
    if spec.base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{name}` must be a mapping of options, got {value!r}")
        return dict(value)
    if spec.base is tuple:
        if not isinstance(value, (tuple, list)) or (
            len(value) != spec.nargs if isinstance(spec.nargs, int) else not value
        ):
            want = f"{spec.nargs} values" if isinstance(spec.nargs, int) else "one or more values"
            raise ConfigError(f"`{name}` needs {want}, got {value!r}")
        numeric = (int,) if spec.elem is int else (int, float)
        if any(
            isinstance(v, bool) or not isinstance(v, numeric if spec.elem in (int, float) else spec.elem) for v in value
        ):
            raise ConfigError(f"`{name}` needs {spec.elem.__name__} values, got {value!r}")
        return tuple(spec.elem(v) for v in value)
    return value
