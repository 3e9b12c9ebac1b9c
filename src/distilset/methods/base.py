"""What every distillation method shares: its config base, the context it is built in, and the outer loop.

A method is a config class (``MethodConfig``: options, checks, dataset-aware defaults) and a stepwise
distiller: an object with ``step(iteration) -> metrics``, ``state_dict()``, ``load_state_dict()`` and
``synthetic_set()``. ``run`` drives it: progress bar, metrics history (``history.json``), a checkpoint every
N iterations (``DIR/checkpoint/state.pt``, tensors and plain values only, read with ``weights_only=True``),
resume from the last checkpoint so that an interrupted run continues bit for bit, and on a non-finite loss,
gradient or learned value a stop that first saves the last good state, names the iteration and the options
of the method that ran. The saved set carries the resolved config and the reasons for the resolved values.

Checkpoint identity: the checkpoint stores the method, seed and resolved config (format 2); ``--resume``
compares them field by field with the new run and names the first setting that differs. Only the fields a
method lists in ``RESUMABLE`` (e.g. the outer learning rate) may change on resume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from tqdm import tqdm

from distilset.config import Config
from distilset.errors import DistilsetError
from distilset.io import save_torch, write_json
from distilset.synset import SyntheticSet

CHECKPOINT = "checkpoint/state.pt"
CHECKPOINT_FORMAT = 2


class NonFiniteError(DistilsetError):
    """Raised by a method's ``step`` before it changes any state, when a loss, gradient or lr is NaN/inf."""


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
    RESUMABLE: ClassVar[tuple[str, ...]] = ()
    """Fields that may differ when a run is resumed (e.g. the outer learning rate)."""
    NONFINITE_HINT: ClassVar[str] = "lower the method's learning rates"
    """What to change after a non-finite stop, options in backticks."""

    def default_iterations(self, data: Any) -> int:
        return self.ITERATIONS


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
        return json.dumps({"format": CHECKPOINT_FORMAT, "method": self.method, "seed": self.seed,
                           "data": self.data, "config": self.config.to_json()})  # fmt: skip

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
        resumable = type(self.config).RESUMABLE
        for key in mine:
            if key not in resumable and mine[key] != theirs.get(key):
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
    return {"name": data.info.name, "train": len(data.train_x), "shape": list(data.image_shape),
            "zca": data.zca is not None}  # fmt: skip


def save_checkpoint(distiller: Distiller, identity: Identity, out: Path, iteration: int, history: list[dict]) -> Path:
    state = {"iteration": iteration, "identity": identity.to_json(), "distiller": distiller.state_dict(),
             "history": json.dumps(history)}  # fmt: skip
    return save_torch(out / CHECKPOINT, state)


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        raise DistilsetError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e


def run(
    distiller: Distiller,
    identity: Identity,
    cfg: RunConfig,
    quick_eval: Callable[[], dict[str, float]] | None = None,
    extra: dict | None = None,
) -> SyntheticSet:
    """Run ``cfg.iterations`` outer iterations (continuing a checkpoint with ``resume``), then save the set.

    The set records the method, its resolved config, the seed, the iterations and ``extra``."""
    start, history = 0, []
    if cfg.resume:
        if cfg.out is None:
            raise DistilsetError("`resume` needs `out`, the directory of the interrupted run")
        state = load_checkpoint(cfg.out)
        if state is None:
            print(f"distilset: no checkpoint in {cfg.out / CHECKPOINT}; starting from iteration 0")
        else:
            identity.check(state.get("identity"), cfg.out)
            start, history = int(state["iteration"]), json.loads(state["history"])
            if start >= cfg.iterations:
                done = "is finished" if start == cfg.iterations else "is further"
                raise DistilsetError(f"the run in {cfg.out} {done} (checkpoint at iteration {start}); to continue "
                                     f"it, resume with `iterations` above {start}")  # fmt: skip
            print(f"distilset: resuming {cfg.out} from iteration {start} of {cfg.iterations}")
            distiller.load_state_dict(state["distiller"])
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), desc="distill", disable=not cfg.progress, initial=start,
               total=cfg.iterations)  # fmt: skip
    hint = type(identity.config).NONFINITE_HINT
    for it in bar:
        try:
            metrics = distiller.step(it)
        except NonFiniteError as e:
            where = ""
            if cfg.out is not None:
                path = save_checkpoint(distiller, identity, cfg.out, it, history)
                write_json(cfg.out / "history.json", history)
                where = f"; the last good state (before iteration {it}) is saved in {path}, continue with `resume`"
            raise DistilsetError(f"{e.args[0]} at outer iteration {it}{where}; {hint}") from e
        row = {"iteration": it + 1, "time_s": round(time.perf_counter() - t0, 3), **metrics}
        if quick_eval is not None and cfg.eval_every and (it + 1) % cfg.eval_every == 0:
            row.update(quick_eval())
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "acc")})
        if cfg.out is not None and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(distiller, identity, cfg.out, it + 1, history)
            write_json(cfg.out / "history.json", history)
    syn = distiller.synthetic_set()
    syn.config = {"method": identity.method, **identity.config.to_json()}
    syn.extra = {**syn.extra, "seed": identity.seed, "iterations": cfg.iterations, **(extra or {})}
    if cfg.out is not None:
        save_checkpoint(distiller, identity, cfg.out, cfg.iterations, history)
        write_json(cfg.out / "history.json", history)
        syn.save(cfg.out)
    return syn
