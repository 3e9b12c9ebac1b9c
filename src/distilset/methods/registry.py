"""The method registry: a name maps to a method (``register_method``, ``list_methods``, ``get_method``).

In the spirit of timm's ``register_model``: a method is one file that ends with

    register_method("dd", DDConfig, DatasetDistillation, presets={...})

and this module only records it (its config class, the distiller it builds, its presets, its ``prepare`` hook)
and checks it at registration. ``distilset.methods.runner.distill`` runs any of them; the command line
(``distilset distill NAME``) is generated from the same entries.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distilset.config import field_specs, renamed
from distilset.errors import ConfigError, DistilsetError
from distilset.methods.base import Distiller, MethodConfig, RunOptions


@dataclass(frozen=True)
class Preset:
    """Named settings: a dataset, an iteration budget and config fields (explicit options override them)."""

    dataset: str
    iterations: int
    options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Method:
    """A registered method: its config class, how to build its distiller, its presets."""

    name: str
    config: type[MethodConfig]
    build: Callable[..., Distiller]
    presets: Mapping[str, Preset] = field(default_factory=dict)
    objects: tuple[str, ...] = ()
    """Keyword objects ``distill`` passes to ``build`` as they are (API only, e.g. a pretrained pool)."""
    data_parallel: bool = False
    """Its distiller runs data-parallel under torchrun, each rank computing its share (``distilset.distributed``)."""
    prepare: Callable[..., dict[str, Any]] | None = None
    """``prepare(data, cfg, ctx)``: side work before the distiller is built, once the output directory is ready;
    returns keyword objects for ``build`` (e.g. ``{"experts": ExpertBuffer}``, ``{"teacher": TeacherNet}``)."""
    ray: bool = False
    """It runs independent parts as Ray tasks when asked (``distill(..., ray=)``, ``--ray``)."""

    @property
    def summary(self) -> str:
        return (self.config.__doc__ or self.name).strip().splitlines()[0]


METHODS: dict[str, Method] = {}
SHARED_OPTIONS = (
    *(s.name for s in field_specs(RunOptions)),
    *("dataset", "data_path", "zca", "evaluate", "ray", "ray_address", "log", "method", "data"),
)
"""Names a method's config may not use: the run options, and what the command line and ``distill`` take besides
(the dataset's, ``--evaluate``, Ray's)."""


def data_parallel_methods() -> list[str]:
    """The methods that run data-parallel under torchrun (registered with ``data_parallel=True``)."""
    return [n for n in sorted(METHODS) if METHODS[n].data_parallel]


def register_method(
    name: str,
    config: type[MethodConfig],
    build: Callable[..., Distiller],
    presets: Mapping[str, Preset] | None = None,
    objects: tuple[str, ...] = (),
    data_parallel: bool = False,
    prepare: Callable[..., dict[str, Any]] | None = None,
    ray: bool = False,
) -> Method:
    """Register a method: ``build(data, cfg, ctx, **objects)`` returns its stepwise distiller; ``prepare(data, cfg,
    ctx)`` (optional) returns more of those objects, made before it is built."""
    if not issubclass(config, MethodConfig):
        raise TypeError(f"{config.__name__} must subclass distilset.methods.base.MethodConfig")
    specs = field_specs(config)  # fails at registration, not at first use, on a type the CLI cannot express
    reserved = sorted({s.name for s in specs} & set(SHARED_OPTIONS))
    if reserved:
        raise ValueError(f"{config.__name__} uses option name(s) {reserved} that every method shares")
    taken = {p: m.name for m in METHODS.values() for p in m.presets if m.name != name}
    clash = sorted(set(presets or {}) & set(taken))
    if clash:
        raise ValueError(f"preset name(s) {clash} already belong to {', '.join(sorted({taken[c] for c in clash}))}")
    method = Method(name, config, build, dict(presets or {}), tuple(objects), data_parallel, prepare, ray)
    for preset_name, preset in method.presets.items():  # a preset that names no valid config fails here
        try:
            make_config(method, {}, preset)
        except ConfigError as e:
            raise ValueError(f"preset {preset_name} of {name}: {e}") from e
    METHODS[name] = method
    return method


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise DistilsetError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def find_preset(name: str) -> tuple[Method, Preset]:
    for method in METHODS.values():
        if name in method.presets:
            return method, method.presets[name]
    known = [p for m in METHODS.values() for p in m.presets]
    raise DistilsetError(f"unknown preset {name!r}; known: {', '.join(known)}")


def preset_of(method: str, name: str) -> Preset:
    """Preset ``name``, which must belong to ``method``."""
    if not any(name in m.presets for m in METHODS.values()):
        own = ", ".join(METHODS[method].presets) if method in METHODS else ""
        raise DistilsetError(f"unknown preset {name!r} for `distill {method}`; its presets: {own or 'none'}")
    owner, preset = find_preset(name)
    if owner.name != method:
        raise DistilsetError(f"preset {name} is for `distill {owner.name}`, not `distill {method}`")
    return preset


def make_config(method: Method, options: Mapping[str, Any], preset: Preset | None = None) -> MethodConfig:
    """The method's config from a preset's options overlaid with ``options``; unknown names are refused."""
    names = [s.name for s in field_specs(method.config)]
    old = {o for s in field_specs(method.config) for o in s.old_names}
    unknown = [k for k in options if k not in names and k not in old]
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hints = "; ".join(f"did you mean `{c[0]}` for {k}?" for k, c in close.items() if c)
        raise ConfigError(
            f"unknown option(s) for {method.name}: {', '.join(unknown)}{'; ' + hints if hints else ''} "
            f"({method.name} options: {', '.join(names)})"
        )
    options = renamed(method.config, options)  # earlier names of a field, with a deprecation warning
    return method.config(**{**(preset.options if preset else {}), **options})


def describe_config(cfg: MethodConfig, notes: Mapping[str, str]) -> list[str]:
    """Lines for the start of a run (``Config.settings_lines``)."""
    return cfg.settings_lines(notes)


def __getattr__(name: str) -> Any:
    """``distill`` and ``validation_accuracy`` moved to ``distilset.methods.runner`` (0.3); importable here for one
    release."""
    if name in ("distill", "validation_accuracy"):
        import warnings

        from distilset.methods import runner

        warnings.warn(f"import {name} from distilset.methods.runner", DeprecationWarning, stacklevel=2)
        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
