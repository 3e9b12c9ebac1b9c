"""What every distillation method shares: the outer-loop runner with checkpoints, resume, history, NaN stop.

A method is an object with ``step(iteration) -> metrics``, ``state_dict()``, ``load_state_dict()`` and
``synthetic_set()``. ``run`` drives it: progress bar, metrics history, a checkpoint every N iterations
(``DIR/checkpoint/state.pt``, tensors and plain values only, loaded with ``weights_only=True``), resume from
the last checkpoint so that an interrupted run continues bit for bit, and on a non-finite loss or parameter
a stop that first saves the last good state and names the iteration.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from distilset.errors import DistilsetError
from distilset.synset import SyntheticSet

CHECKPOINT = "checkpoint/state.pt"


class NonFiniteError(DistilsetError):
    """Raised by a method's ``step`` before it changes any state, when a loss, gradient or lr is NaN/inf."""


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_checkpoint(distiller: Distiller, out: Path, iteration: int, history: list[dict]) -> Path:
    path = out / CHECKPOINT
    _atomic_torch_save({"iteration": iteration, "distiller": distiller.state_dict(), "history": json.dumps(history)},
                       path)  # fmt: skip
    return path


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
    cfg: RunConfig,
    quick_eval: Callable[[], dict[str, float]] | None = None,
) -> SyntheticSet:
    """Run ``cfg.iterations`` outer iterations (continuing a checkpoint with ``resume``), then save the set."""
    start, history = 0, []
    if cfg.resume:
        if cfg.out is None:
            raise DistilsetError("--resume needs --out DIR (the directory of the interrupted run)")
        state = load_checkpoint(cfg.out)
        if state is None:
            print(f"distilset: no checkpoint in {cfg.out / CHECKPOINT}; starting from iteration 0")
        else:
            distiller.load_state_dict(state["distiller"])
            start, history = int(state["iteration"]), json.loads(state["history"])
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.iterations), desc="distill", disable=not cfg.progress, initial=start,
               total=cfg.iterations)  # fmt: skip
    for it in bar:
        try:
            metrics = distiller.step(it)
        except NonFiniteError as e:
            where = ""
            if cfg.out is not None:
                path = save_checkpoint(distiller, cfg.out, it, history)
                _write_json(cfg.out / "history.json", history)
                where = f"; the last good state (before iteration {it}) is saved in {path}, continue with --resume"
            raise DistilsetError(f"{e} at outer iteration {it}{where}; lower the outer learning rate (--lr)") from e
        row = {"iteration": it + 1, "time_s": round(time.perf_counter() - t0, 3), **metrics}
        if quick_eval is not None and cfg.eval_every and (it + 1) % cfg.eval_every == 0:
            row.update(quick_eval())
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "acc")})
        if cfg.out is not None and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(distiller, cfg.out, it + 1, history)
            _write_json(cfg.out / "history.json", history)
    syn = distiller.synthetic_set()
    syn.extra = {**syn.extra, "iterations": cfg.iterations}
    if cfg.out is not None:
        save_checkpoint(distiller, cfg.out, cfg.iterations, history)
        _write_json(cfg.out / "history.json", history)
        syn.save(cfg.out)
    return syn
