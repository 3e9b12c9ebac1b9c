"""What every distillation method shares: its config base, the context it is built in, and the outer loop.

A method is a config class (``MethodConfig``: options, checks, dataset-aware defaults) and a stepwise
distiller: an object with ``step(iteration) -> metrics``, ``state_dict()``, ``load_state_dict()`` and
``synthetic_set()``. ``run`` drives it: progress (``distilset.progress``: a bar on a terminal, log lines
elsewhere), metrics history (``history.json``), a checkpoint every N iterations (``DIR/checkpoint/state.pt``,
tensors and plain values only, read with ``weights_only=True`` and checked before use), resume from the last
checkpoint so that an interrupted run continues bit for bit, a stop on SIGINT/SIGTERM at the end of the current
iteration that saves the state first, and on a non-finite loss, gradient or learned value a stop that first
saves the last good state, names the iteration and the options of the method that ran. The saved set carries
the resolved config and the reasons for the resolved values.

Checkpoint identity: the checkpoint stores the method, seed and resolved config (format 2); ``--resume``
compares them field by field with the new run and names the first setting that differs. Only the fields a
method lists in ``RESUMABLE`` (e.g. the outer learning rate) may change on resume.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch

from distilset.config import Config, auto
from distilset.distributed import current
from distilset.errors import ConfigError, DistilsetError, Interrupted
from distilset.files import CHECKPOINT, HISTORY
from distilset.io import load_torch, save_torch, write_json
from distilset.nets import create_net
from distilset.nets.registry import fit_net_to_input
from distilset.progress import Progress
from distilset.synset import SyntheticSet
from distilset.teachers import TeacherNet, teacher_for, teacher_path

CHECKPOINT_FORMAT = 2


class NonFiniteError(DistilsetError):
    """Raised by a method's ``step`` before it changes any state, when a loss, gradient or lr is NaN/inf."""


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], lr: float) -> None:
    """Load an optimizer's checkpointed state but keep this run's lr (a resume may lower a resumable lr, the
    way out of a non-finite stop)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


def rewind_on_nonfinite(generator: torch.Generator, step: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run one outer step; if it stops on a non-finite value, put ``generator`` back where the step found it,
    so the state saved at the stop replays the same iteration on resume."""
    drawn = generator.get_state()
    try:
        return step()
    except NonFiniteError:
        generator.set_state(drawn)
        raise


@dataclass(frozen=True)
class MethodConfig(Config):
    """Base of the methods' configs: a default iteration budget, resumable fields and a hint for NaN stops."""

    ITERATIONS: ClassVar[int] = 400
    """Outer iterations when the user gives none (CPU-sized; the papers' budgets are in the presets)."""
    ITERATIONS_HELP: ClassVar[str | None] = None
    """How the default budget is chosen, for the help, when ``default_iterations`` depends on the data."""
    RESUMABLE: ClassVar[tuple[str, ...]] = ()
    """Fields that may differ when a run is resumed (e.g. the outer learning rate)."""
    NONFINITE_HINT: ClassVar[str] = "lower the method's learning rates"
    """What to change after a non-finite stop, options in backticks."""

    def default_iterations(self, data: Any) -> int:
        return self.ITERATIONS

    def check_iterations(self, iterations: int, data: Any) -> None:
        """Refuse an iteration budget the method cannot take (e.g. one class per iteration: exactly the classes)."""

    def check_ranks(self, world: int) -> None:
        """Refuse settings that leave nothing to shard over ``world`` data-parallel processes (a method registered
        with ``data_parallel=True`` whose share depends on an option overrides this)."""

    def fill_convnet(self, data: Any, why: str, **more: tuple[Any, str]) -> tuple[MethodConfig, dict[str, str]]:
        """``fill`` with ``net`` defaulting to the ConvNet (``why``) and ``more`` auto fields, then the ConvNet's
        depth fitted to the input (``nets.registry.fit_net_to_input``) unless ``net_kwargs`` gives one."""
        cfg, notes = self.fill(net=("convnet", why), **more)
        kwargs, fitted = fit_net_to_input(cfg.net, cfg.net_kwargs, data.image_shape)
        if fitted:
            cfg, notes = dataclasses.replace(cfg, net_kwargs=kwargs), {**notes, "net_kwargs": fitted}
        return cfg, notes


def per_channel_norm(module: torch.nn.Module) -> bool:
    """Batch or instance norm (PyTorch's, or DC's GroupNorm with one group per channel): per-channel statistics."""
    if isinstance(module, torch.nn.GroupNorm):
        return module.num_groups == module.num_channels
    return isinstance(module, torch.nn.modules.batchnorm._NormBase)


@dataclass(frozen=True)
class PixelStatsOption:
    """Mixin of the configs of methods that learn pixels through a network that normalises its activations
    (DC, DSA, DM, MTT on their ConvNet with instance norm): how the saved images are scaled.

    Such a network barely sees a change of its input's scale or of its channel means (instance or batch norm
    after the first convolution removes them, up to the zero-padded borders), so nothing holds the learned
    pixels at the real images' scale: MTT's drift to a standard deviation of 4-8 and DM's to about 2 (real
    images: 1), and a batch-norm network trained on them meets real test images far from its running statistics."""

    pixel_stats: Literal["real", "learned"] | None = auto(
        "real when the distillation net has instance or batch norm, else learned"
    )
    """Save the images shifted and scaled to the real training images' channel means and pixel scale (nearly
    invisible to an instance- or batch-norm net; the learned statistics stay in the set's extra), or as learned."""

    def fill_pixel_stats(self, data: Any) -> tuple[Any, dict[str, str]]:
        """``fill`` ``pixel_stats`` from whether the (resolved) distillation net has a normalisation layer."""
        net = create_net(self.net, data.image_shape, data.num_classes, seed=0, **self.net_kwargs)
        if any(per_channel_norm(m) for m in net.modules()):
            return self.fill(pixel_stats=("real", f"{self.net} has instance or batch norm"))
        return self.fill(pixel_stats=("learned", f"{self.net} has no instance or batch norm"))

    def finish_set(self, syn: SyntheticSet, data: Any) -> SyntheticSet:
        """The set as saved: with the real images' pixel statistics unless ``pixel_stats`` is learned."""
        return syn.with_pixel_stats_of(data.train_x) if self.pixel_stats == "real" else syn


@dataclass(frozen=True)
class TeacherOption:
    """Mixin of the configs of methods that distil with a trained teacher (SRe2L, RDED): where the teacher is.
    Their ``prepare`` hook is ``prepare_teacher``; their sets carry the teacher and the teacher recipe."""

    teacher: str | None = None
    """Teacher directory (from `distilset teacher`, or a set that carries one), used as it is, or a teacher trained
    there first if it holds none; none: OUT/teacher (trained there once, reused by later runs)."""

    def check_teacher_ranks(self, world: int) -> None:
        """Under torchrun the teacher must exist: one rank training it while the others wait would time out."""
        if world > 1 and (self.teacher is None or not teacher_path(self.teacher).is_file()):
            raise ConfigError(
                "under torchrun the processes read a trained teacher: train it first with `distilset "
                "teacher` and give `teacher`"
            )


def prepare_teacher(data: Any, cfg: TeacherOption, ctx: Context) -> dict[str, TeacherNet]:
    """The ``prepare`` hook of the teacher methods: the teacher of ``cfg.teacher`` (or OUT/teacher), trained first
    when there is none (``distilset.teachers.teacher_for``)."""
    return {"teacher": teacher_for(cfg.teacher, data, ctx.out, ctx.seed, ctx.device, ctx.progress, ctx.log)}


@dataclass(frozen=True)
class Context:
    """Where and how a method runs: seed, device, output directory, progress and a logger for notes."""

    seed: int = 0
    device: str = "cpu"
    out: Path | None = None
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda message: None)
    data_root: str | None = None
    download: bool = False
    ray: bool | str | None = None
    """Run independent parts as Ray tasks or actors (``distilset.jobs``), where the method or system offers it."""
    iterations: int | None = None
    """The run's outer iterations, for methods whose schedule spans the run (SRe2L's cosine)."""


class Distiller(Protocol):
    def step(self, iteration: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def synthetic_set(self) -> SyntheticSet: ...


@dataclass(frozen=True)
class RunConfig:
    """How long to run and where to keep the work."""

    iterations: int
    out: Path | None = None
    checkpoint_every: int = 50
    eval_every: int = 0
    resume: bool = False
    progress: bool = False


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
        theirs = old.get("config") or {}
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
    cfg: RunConfig,
    quick_eval: Callable[[], dict[str, float]] | None = None,
    extra: dict | None = None,
) -> SyntheticSet:
    """Run ``cfg.iterations`` outer iterations (continuing a checkpoint with ``resume``), then save the set.

    SIGINT or SIGTERM stops the run at the end of the current iteration, saves a checkpoint (with ``out``) and
    raises ``Interrupted`` saying how to continue. The set records the method, its resolved config, the seed,
    the iterations and ``extra``."""
    start, history = 0, []
    if not current().writer:  # data-parallel: rank 0 writes; every rank reads a checkpoint to resume
        cfg = dataclasses.replace(cfg, progress=False, checkpoint_every=0)
        quick_eval = None
    writes = current().writer
    if cfg.resume:
        if cfg.out is None:
            raise DistilsetError("`resume` needs `out`, the directory of the interrupted run")
        state = load_checkpoint(cfg.out)
        if state is None and writes:
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
