"""Distillation methods, one file each, behind one entry point: ``distill(name, data, ...)``."""

from __future__ import annotations

from pathlib import Path

from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.methods import dd
from distilset.methods.base import RunConfig, run
from distilset.synset import SyntheticSet

METHODS = ("dd",)


def distill(
    method: str,
    data: Dataset,
    iterations: int = 400,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = False,
    checkpoint_every: int = 50,
    eval_every: int = 0,
    **options,
) -> SyntheticSet:
    """Distill ``data`` with ``method``; ``options`` are the method's config fields (e.g. ``ipc``, ``steps``).

    With ``out`` the run writes the set, ``history.json`` and a checkpoint every ``checkpoint_every``
    iterations to that directory; ``resume=True`` continues from its last checkpoint.
    """
    if method not in METHODS:
        raise DistilsetError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    cfg_fields = dd.DDConfig.__dataclass_fields__
    unknown = [k for k in options if k not in cfg_fields]
    if unknown:
        raise DistilsetError(f"unknown option(s) for {method}: {', '.join(unknown)}")
    pool = options.pop("pool", None)
    cfg = dd.DDConfig(**options)
    distiller = dd.DatasetDistillation(data, cfg, seed=seed, pool=pool, device=device)
    run_cfg = RunConfig(iterations=iterations, out=Path(out) if out else None, checkpoint_every=checkpoint_every,
                        eval_every=eval_every, resume=resume, progress=progress)  # fmt: skip
    return run(distiller, run_cfg, quick_eval=distiller.quick_eval)


__all__ = ["METHODS", "distill"]
