"""Running any registered method: ``distill(name, data, ...)`` and the outer loop that drives a distiller.

The registry (``distilset.methods.registry``) maps a name to a method: its config class, its distiller, its
presets and an optional ``prepare`` hook. This module runs one, and knows no method or dataset by name:

1. the run options (``RunOptions``, shared by every method) and the method's own options are checked;
2. the method's config is made (a preset's options first, the given ones over them) and resolved once from the
   dataset; the distiller receives it resolved;
3. the output directory is prepared, refusing one that holds another run (``distilset.rundir``);
4. the method's ``prepare(data, cfg, ctx)`` does the side work that must exist before the distiller (MTT's expert
   trajectories, the teacher of SRe2L and RDED) and returns keyword objects for its constructor;
5. ``run`` drives the distiller: progress (a bar on a terminal, log lines elsewhere), one history row per
   iteration (``history.json``), a checkpoint every N iterations (``checkpoint/state.pt``: tensors and plain
   values, read with ``weights_only=True`` and checked before use), resume from the last checkpoint so that an
   interrupted run continues bit for bit, a stop on SIGINT/SIGTERM at the end of the current iteration that saves
   the state first, and on a non-finite value a stop that saves the last good state and names the iteration;
6. the set is saved with its resolved config and the reason for each resolved value, and the dataset's source
   writes a readable view beside it when it has one (text sets: the items decoded, ``Source.describe``).

Checkpoint identity: the checkpoint stores the method, seed, dataset and resolved config (format 2); ``resume``
compares them field by field with the new run and names the first setting that differs. Only the fields a
method lists in ``RESUMABLE`` (e.g. the outer learning rate) may change on resume.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from distilset.config import Config, field_specs, renamed
from distilset.data.dataset import Dataset
from distilset.distributed import current
from distilset.errors import ConfigError, DistilsetError, Interrupted
from distilset.files import CHECKPOINT, HISTORY
from distilset.io import load_torch, save_torch, write_json
from distilset.methods.base import Distiller, NonFiniteError, RunOptions, split_options
from distilset.methods.registry import METHODS, data_parallel_methods, get_method, make_config, preset_of
from distilset.progress import Progress
from distilset.rundir import prepare_out, releases_locks
from distilset.runtime import tune_allocator
from distilset.synset import SyntheticSet

CHECKPOINT_FORMAT = 2


RunConfig = RunOptions
"""The name ``run`` took its options by before 0.3 (``RunOptions`` holds the same fields and more)."""


@dataclass(frozen=True)
class Identity:
    """What a checkpoint must share with a run that resumes it."""

    method: str
    seed: int
    config: Config
    data: dict = field(default_factory=dict)
    """The dataset the run distils: name, training-set size, image shape, ZCA."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "method": self.method,
                "seed": self.seed,
                "data": self.data,
                "config": self.config.to_json(),
            }
        )

    def check(self, stored: str | None, where: Path) -> None:
        """Refuse a checkpoint made with other settings, naming the first setting that differs."""
        try:
            old = json.loads(stored) if isinstance(stored, str) else None
        except json.JSONDecodeError:
            old = None
        if not isinstance(old, dict) or old.get("format") != CHECKPOINT_FORMAT:
            raise DistilsetError(
                f"the checkpoint in {where} was written by an older distilset (no settings to compare); "
                "start a new `out` directory"
            )
        if old.get("method") != self.method:
            raise DistilsetError(f"{where} holds a `distill {old.get('method')}` run, not `distill {self.method}`")
        if old.get("data") != self.data:
            raise DistilsetError(
                f"cannot resume {where}: it distils {_describe(old.get('data'))}, not {_describe(self.data)}; "
                "resume with the same `dataset` or start a new `out` directory"
            )
        if old.get("seed") != self.seed:
            raise DistilsetError(f"cannot resume {where}: it was made with `seed` {old.get('seed')}, not {self.seed}")
        mine = json.loads(json.dumps(self.config.to_json()))  # the stored form: compare like with like
        theirs = renamed(type(self.config), old.get("config") or {}, warn=False)  # earlier names of a field
        defaults = json.loads(json.dumps(type(self.config)().to_json()))  # a setting newer than the checkpoint
        resumable = type(self.config).RESUMABLE
        for key in mine:
            if key not in resumable and mine[key] != theirs.get(key, defaults.get(key)):
                may = f" (only {', '.join(f'`{k}`' for k in resumable)} may change)" if resumable else ""
                raise DistilsetError(
                    f"cannot resume {where}: it was made with `{key}` {theirs.get(key)!r}, this run has "
                    f"{mine[key]!r}; resume with the same settings{may} or start a new `out` directory"
                )


def _describe(data: dict | None) -> str:
    if not data:
        return "an unrecorded dataset"
    zca = ", ZCA" if data.get("zca") else ""
    return f"{data['name']} ({data['train']} images of {'x'.join(map(str, data['shape']))}{zca})"


def dataset_identity(data) -> dict:
    return {
        "name": data.info.name,
        "train": len(data.train_x),
        "shape": list(data.image_shape),
        "zca": data.zca is not None,
    }


def save_checkpoint(distiller: Distiller, identity: Identity, out: Path, iteration: int, history: list[dict]) -> Path:
    state = {
        "iteration": iteration,
        "identity": identity.to_json(),
        "distiller": distiller.state_dict(),
        "history": json.dumps(history),
    }
    return save_torch(out / CHECKPOINT, state)


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    """The checkpoint in ``out`` (None if there is none), its structure checked; the distiller's own state is
    checked when it is loaded into the distiller (``_restore``)."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state = load_torch(path)
    problem = _checkpoint_problem(state)
    if problem:
        raise DistilsetError(f"checkpoint {path} is corrupt ({problem}); delete {path.parent} to start over")
    return state


def _checkpoint_problem(state: Any) -> str | None:
    if not isinstance(state, dict) or not {"iteration", "identity", "distiller", "history"} <= set(state):
        return "not a distilset checkpoint"
    iteration = state["iteration"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        return f"iteration {iteration!r} is not a count"
    if not isinstance(state["identity"], str) or not isinstance(state["distiller"], dict):
        return "identity or state of the wrong type"
    try:
        history = json.loads(state["history"]) if isinstance(state["history"], str) else None
    except json.JSONDecodeError:
        history = None
    if not isinstance(history, list) or len(history) != iteration or not all(isinstance(r, dict) for r in history):
        return f"its history does not hold one row per iteration up to {iteration}"
    bad = [k for k, v in _tensors(state["distiller"]) if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        return f"{bad[0]} holds NaN or inf"
    return None


def _tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested state (dicts, lists), with its path."""
    if isinstance(obj, torch.Tensor):
        return [(prefix or "state", obj)]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [pair for k, v in items for pair in _tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def _restore(distiller: Distiller, state: dict[str, Any], where: Path) -> None:
    """Load the checkpoint's state, first checking every tensor this run also holds (the images, a fixed init, ...)
    has this run's shape and dtype: a tensor of another shape would fail only later, inside a step. Tensors a fresh
    run holds empty (a record that grows by an entry per iteration, as label distillation's errors) are not
    compared."""
    mine = {k: v for k, v in _tensors(distiller.state_dict()) if v.numel()}  # empty ones grow as a run goes on
    for key, tensor in _tensors(state):
        if key in mine and (mine[key].shape != tensor.shape or mine[key].dtype != tensor.dtype):
            raise DistilsetError(
                f"the checkpoint in {where} does not fit this run ({key} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"this run's {tuple(mine[key].shape)} {mine[key].dtype}); delete {where / 'checkpoint'} to start over"
            )
    try:
        distiller.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise DistilsetError(
            f"the checkpoint in {where} does not fit this run ({str(e).splitlines()[0][:200]}); "
            f"delete {where / 'checkpoint'} to start over"
        ) from e


@contextmanager
def _stop_on_signal() -> Iterator[dict[str, str | None]]:
    """SIGINT/SIGTERM ask the loop to stop after the current iteration (and save); a second one aborts."""
    request: dict[str, str | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}  # e.g. SIGINT of a background job

    def ask(signum, frame):
        if request["signal"] is not None:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name
        print("distilset: stopping after this iteration to save the state (again to abort)", file=sys.stderr)

    for s in previous:
        signal.signal(s, ask)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _save(distiller: Distiller, identity: Identity, out: Path, iteration: int, history: list[dict]) -> Path:
    path = save_checkpoint(distiller, identity, out, iteration, history)
    write_json(out / HISTORY, history)
    return path


def run(
    distiller: Distiller,
    identity: Identity,
    cfg: RunOptions,
    quick_eval: Callable[[], dict[str, float]] | None = None,
    extra: dict | None = None,
) -> SyntheticSet:
    """Run ``cfg.iterations`` outer iterations (continuing a checkpoint with ``resume``), then save the set.

    SIGINT or SIGTERM stops the run at the end of the current iteration, saves a checkpoint (with ``out``) and
    raises ``Interrupted`` saying how to continue. The set records the method, its resolved config, the seed,
    the iterations and ``extra``."""
    if cfg.iterations is None:
        raise DistilsetError("`run` needs `iterations`, the outer iterations to run")
    start, history = 0, []
    if not current().writer:  # data-parallel: rank 0 writes; every rank reads a checkpoint to resume
        cfg = dataclasses.replace(cfg, progress=False)  # and no checkpoints: only the writer saves
        quick_eval = None
    writes = current().writer
    if cfg.resume:
        state = load_checkpoint(cfg.out)
        if state is None:
            if writes:
                print(f"distilset: no checkpoint in {cfg.out / CHECKPOINT}; starting from iteration 0")
        else:
            identity.check(state.get("identity"), cfg.out)
            start, history = state["iteration"], json.loads(state["history"])
            if start >= cfg.iterations:
                done = "is finished" if start == cfg.iterations else "is further"
                raise DistilsetError(
                    f"the run in {cfg.out} {done} (checkpoint at iteration {start}); to continue "
                    f"it, resume with `iterations` above {start}"
                )
            if writes:
                print(f"distilset: resuming {cfg.out} from iteration {start} of {cfg.iterations}")
            _restore(distiller, state["distiller"], cfg.out)
    t0 = time.perf_counter()
    hint = type(identity.config).NONFINITE_HINT
    with _stop_on_signal() as stop, Progress(cfg.iterations, f"distill {identity.method}", cfg.progress, start) as bar:
        for it in range(start, cfg.iterations):
            try:
                metrics = distiller.step(it)
            except NonFiniteError as e:
                where = ""
                if cfg.out is not None and writes:
                    path = _save(distiller, identity, cfg.out, it, history)
                    where = f"; the last good state (before iteration {it}) is saved in {path}, continue with `resume`"
                raise DistilsetError(f"{e.args[0]} at outer iteration {it}{where}; {hint}") from e
            row = {"iteration": it + 1, "time_s": round(time.perf_counter() - t0, 3), **metrics}
            if quick_eval is not None and cfg.eval_every and (it + 1) % cfg.eval_every == 0:
                row.update(quick_eval())
            history.append(row)
            bar.update({k: v for k, v in row.items() if k in ("loss", "val_acc")})
            if cfg.out is not None and writes and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
                _save(distiller, identity, cfg.out, it + 1, history)
            if current().any(bool(stop["signal"])) and it + 1 < cfg.iterations:  # every rank stops together
                stop["signal"] = stop["signal"] or "a signal to another rank"
                if cfg.out is None:
                    raise Interrupted(
                        f"stopped by {stop['signal']} after iteration {it + 1}; nothing was saved (no `out` directory)"
                    )
                if writes:
                    _save(distiller, identity, cfg.out, it + 1, history)
                raise Interrupted(
                    f"stopped by {stop['signal']} after iteration {it + 1} of {cfg.iterations}; the state is saved "
                    f"in {cfg.out / CHECKPOINT}: run the same command with `resume` to continue"
                )
    syn = distiller.synthetic_set()
    syn.config = {"method": identity.method, **identity.config.to_json()}
    syn.extra = {**syn.extra, "seed": identity.seed, "iterations": cfg.iterations, **(extra or {})}
    if cfg.out is not None and writes:
        _save(distiller, identity, cfg.out, cfg.iterations, history)
        syn.save(cfg.out)
    current().barrier()  # the other ranks return once the set is on disk
    return syn


@releases_locks
def distill(
    method: str,
    data: Dataset,
    *,
    log: Callable[[str], None] | None = None,
    ray: bool | str | None = None,
    **options: Any,
) -> SyntheticSet:
    """Distill ``data`` with ``method``; ``options`` are the run options (``RunOptions``: ``out``, ``iterations``,
    ``seed``, ``device``, ``resume``, ``overwrite``, ``checkpoint_every``, ``eval_every``, ``preset``,
    ``progress``, ``data_root``, ``download``) and fields of the method's config (e.g. ``ipc``).

    Unset options take the method's defaults, resolved from the dataset where they depend on it (input size,
    classes, training-set size); ``preset`` starts from named settings instead. ``iterations``: default the
    preset's, else the method's budget. With ``out`` the run writes the set, ``history.json`` and a checkpoint
    every ``checkpoint_every`` iterations; ``resume=True`` continues its last checkpoint and ``overwrite=True``
    replaces a run already there (without either, such a directory is refused: see ``distilset.rundir``).
    ``log`` receives the resolved settings (the CLI prints them). ``ray``: methods that offer it run independent
    parts as Ray tasks (``distilset.jobs``; ``True`` a local cluster, or an address). Objects a method takes as
    they are (``Method.objects``, e.g. a pretrained pool) are passed as keywords too.
    """
    tune_allocator()
    m = get_method(method)
    objects = {k: options.pop(k) for k in m.objects if k in options}
    opts = split_options(RunOptions, options)
    if ray and not m.ray:
        offered = ", ".join(n for n in sorted(METHODS) if METHODS[n].ray) or "none"
        raise ConfigError(f"`distill {m.name}` has no Ray tasks (methods that do: {offered}); drop `ray`")
    if ray and opts.device.startswith("cuda"):
        raise ConfigError("`ray` runs CPU tasks; distil on CUDA without `ray`, or on the CPU with it")
    chosen = preset_of(m.name, opts.preset) if opts.preset is not None else None
    validation = None
    if opts.eval_every:  # monitoring scores held-out training images; the method distils the rest, never the test
        data, validation = data.validation_split()
    cfg, notes = make_config(m, options, chosen).resolve(data)
    iterations = opts.iterations or (chosen.iterations if chosen else cfg.default_iterations(data))
    cfg.check_iterations(iterations, data)
    shards = current()
    if shards.world > 1 and not m.data_parallel:
        raise DistilsetError(
            f"`distill {m.name}` does not run data-parallel ({shards.world} processes); "
            f"run it in one process, or use one of {', '.join(data_parallel_methods())}"
        )
    cfg.check_ranks(shards.world)
    out = opts.out
    if out is not None:  # before any work: a directory holding another run, or one we cannot write, fails now
        out = Path(shards.on_writer(lambda: prepare_out(out, resume=opts.resume, overwrite=opts.overwrite)))
    opts = dataclasses.replace(opts, out=out, iterations=iterations, progress=opts.progress and shards.writer)
    log = log if log and shards.writer else (lambda message: None)
    log(f"distill {m.name} on {data.info.name}, {iterations} iterations, seed {opts.seed}:")
    if validation is not None:
        log(
            f"  validation accuracy every {opts.eval_every} iterations on {len(validation.test_x)} held-out "
            f"training images; the method distils the other {len(data.train_x)}"
        )
    for line in cfg.settings_lines(notes):
        log(line)
    ctx = opts.context(log, ray, iterations=iterations)
    if m.prepare is not None:
        objects = {**m.prepare(data, cfg, ctx), **objects}
    distiller = m.build(data, cfg, ctx, **objects)
    identity = Identity(m.name, opts.seed, cfg, dataset_identity(data))
    monitor = partial(distiller.quick_eval, validation) if validation is not None else None
    syn = run(distiller, identity, opts, quick_eval=monitor, extra={"resolved": dict(notes)})
    if out is not None and shards.writer:
        from distilset.data.registry import SOURCES, default_root

        source = SOURCES.get(data.info.name)
        if source is not None and source.describe is not None:  # e.g. a text set's items decoded
            source.describe(syn, out, Path(opts.data_root) if opts.data_root else default_root())
    return syn


def _signature() -> inspect.Signature:
    """``distill``'s signature as ``help()`` shows it: the run options as keywords, from ``RunOptions``."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    shown = inspect.signature(distill).parameters
    run_options = [inspect.Parameter(s.name, keyword, default=s.default) for s in field_specs(RunOptions)]
    return inspect.Signature(
        [shown["method"], shown["data"], *run_options, shown["log"], shown["ray"], shown["options"]],
        return_annotation=SyntheticSet,
    )


distill.__signature__ = _signature()


def validation_accuracy(distiller: Distiller, validation: Dataset, device: str) -> dict[str, float]:
    """``Distiller.quick_eval`` (the name before 0.3)."""
    return Distiller.quick_eval(distiller, validation)
