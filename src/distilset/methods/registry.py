"""The method registry: ``register_method``, ``list_methods``, ``get_method`` and ``distill``.

In the spirit of timm's ``register_model`` / ``create_model``: a method is one file that ends with

    register_method("dd", DDConfig, DatasetDistillation, presets={...})

and ``distill(name, data, **options)`` builds its config from the options (a preset's first), resolves the
dataset-aware defaults, runs the method's ``prepare`` hook for side work that must exist before the distiller
(MTT's expert trajectories, the teacher of SRe2L and RDED: trained, or read from a directory), builds the
distiller and runs it. Nothing here knows any particular method; the command line (``distilset distill NAME``)
is generated from the same registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from distilset.config import check_seed, field_specs
from distilset.data.dataset import Dataset
from distilset.distributed import current
from distilset.errors import ConfigError, DistilsetError
from distilset.evaluate import evaluate
from distilset.methods.base import Context, Distiller, Identity, MethodConfig, RunConfig, dataset_identity, run
from distilset.rundir import prepare_out, releases_locks
from distilset.synset import SyntheticSet


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
# Options every `distill METHOD` shares (declared once in the CLI); a method's config may not use these names.
SHARED_OPTIONS = (
    "dataset",
    "data_root",
    "data_path",
    "download",
    "zca",
    "out",
    "preset",
    "iterations",
    "seed",
    "device",
    "resume",
    "overwrite",
    "checkpoint_every",
    "eval_every",
    "evaluate",
    "progress",
    "log",
    "method",
    "data",
    "ray",
    "ray_address",
)


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
    unknown = [k for k in options if k not in names]
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hints = "; ".join(f"did you mean `{c[0]}` for {k}?" for k, c in close.items() if c)
        raise ConfigError(
            f"unknown option(s) for {method.name}: {', '.join(unknown)}{'; ' + hints if hints else ''} "
            f"({method.name} options: {', '.join(names)})"
        )
    return method.config(**{**(preset.options if preset else {}), **options})


def describe_config(cfg: MethodConfig, notes: Mapping[str, str]) -> list[str]:
    """Lines for the start of a run: every setting, then why each resolved one has its value."""
    items = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.to_json().items()]
    lines, line = [], " "
    for item in items:
        if len(line) + len(item) > 110:
            lines.append(line)
            line = " "
        line += " " + item
    lines.append(line)
    lines += [f"  auto {k}: {why}" for k, why in notes.items()]
    return lines


@releases_locks
def distill(
    method: str,
    data: Dataset,
    iterations: int | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    checkpoint_every: int = 50,
    eval_every: int = 0,
    preset: str | None = None,
    log: Callable[[str], None] | None = None,
    data_root: str | None = None,
    download: bool = False,
    ray: bool | str | None = None,
    **options,
) -> SyntheticSet:
    """Distill ``data`` with ``method``; ``options`` are fields of the method's config (e.g. ``ipc``).

    Unset options take the method's defaults, resolved from the dataset where they depend on it (input
    size, classes, training-set size); ``preset`` starts from named settings instead. ``iterations``:
    default the preset's, else the method's budget. With ``out`` the run writes the set, ``history.json``
    and a checkpoint every ``checkpoint_every`` iterations; ``resume=True`` continues its last checkpoint and
    ``overwrite=True`` replaces a run already there (without either, such a directory is refused: see
    ``distilset.rundir``).
    ``log`` receives the resolved settings (the CLI prints them). ``ray``: methods that offer it run independent
    parts as Ray tasks (``distilset.jobs``; ``True`` a local cluster, or an address).
    """
    m = get_method(method)
    if ray and not m.ray:
        offered = ", ".join(n for n in sorted(METHODS) if METHODS[n].ray) or "none"
        raise ConfigError(f"`distill {m.name}` has no Ray tasks (methods that do: {offered}); drop `ray`")
    if ray and device.startswith("cuda"):
        raise ConfigError("`ray` runs CPU tasks; distil on CUDA without `ray`, or on the CPU with it")
    chosen = preset_of(m.name, preset) if preset is not None else None
    objects = {k: options.pop(k) for k in m.objects if k in options}
    if eval_every < 0:
        raise ConfigError(f"`eval_every` must be >= 0 (0: no accuracy during the run), got {eval_every}")
    validation = None
    if eval_every:  # monitoring scores held-out training images; the method distils the rest, never the test split
        data, validation = data.validation_split()
    cfg, notes = make_config(m, options, chosen).resolve(data)
    if iterations is None:
        iterations = chosen.iterations if chosen else cfg.default_iterations(data)
    if iterations < 1:
        raise ConfigError(f"`iterations` must be >= 1, got {iterations}")
    cfg.check_iterations(iterations, data)
    check_seed(seed)
    if checkpoint_every < 1:
        raise ConfigError(f"`checkpoint_every` must be >= 1 (iterations between checkpoints), got {checkpoint_every}")
    shards = current()
    if shards.world > 1 and not m.data_parallel:
        supported = ", ".join(data_parallel_methods())
        raise DistilsetError(
            f"`distill {m.name}` does not run data-parallel ({shards.world} processes); "
            f"run it in one process, or use one of {supported}"
        )
    cfg.check_ranks(shards.world)
    if out is not None:  # before any work: a directory holding another run, or one we cannot write, fails now
        out = shards.on_writer(lambda: prepare_out(out, resume=resume, overwrite=overwrite))
    log = log if log and shards.writer else (lambda message: None)
    progress = progress and shards.writer
    log(f"distill {m.name} on {data.info.name}, {iterations} iterations, seed {seed}:")
    if validation is not None:
        log(
            f"  validation accuracy every {eval_every} iterations on {len(validation.test_x)} held-out training "
            f"images; the method distils the other {len(data.train_x)}"
        )
    for line in describe_config(cfg, notes):
        log(line)
    ctx = Context(
        seed=seed,
        device=device,
        out=Path(out) if out else None,
        progress=progress,
        log=log,
        data_root=data_root,
        download=download,
        ray=ray,
        iterations=iterations,
    )
    if m.prepare is not None:
        objects = {**m.prepare(data, cfg, ctx), **objects}
    distiller = m.build(data, cfg, ctx, **objects)
    run_cfg = RunConfig(
        iterations=iterations,
        out=ctx.out,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        resume=resume,
        progress=progress,
    )
    identity = Identity(m.name, seed, cfg, dataset_identity(data))
    monitor = None
    if validation is not None:
        own = getattr(distiller, "quick_eval", None)
        monitor = partial(own, validation) if own else partial(validation_accuracy, distiller, validation, device)
    syn = run(distiller, identity, run_cfg, quick_eval=monitor, extra={"resolved": dict(notes)})
    if ctx.out is not None and syn.dataset in ("rotten-tomatoes", "rotten-tomatoes-sentences"):  # text: decode items
        from distilset.data import text
        from distilset.data.registry import default_root

        if syn.dataset == "rotten-tomatoes":
            text.write_nearest_words(syn, ctx.out)
        else:
            text.write_nearest(syn, ctx.out, Path(data_root) if data_root else default_root())
    return syn


def validation_accuracy(distiller: Any, validation: Dataset, device: str) -> dict[str, float]:
    """Accuracy of the current set, trained once by its recipe, on the held-out training images."""
    res = evaluate(distiller.synthetic_set(), validation, repeats=1, seed=777, device=device)
    return {"val_acc": res.accuracy_mean}
