"""Distillation methods, one file each, behind one entry point: ``distill(name, data, ...)``."""

from __future__ import annotations

from pathlib import Path

from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.methods import dd, labels, mtt
from distilset.methods.base import RunConfig, run
from distilset.synset import SyntheticSet

METHODS = ("dd", "labels", "mtt")
CONFIGS = {"dd": dd.DDConfig, "labels": labels.LabelConfig, "mtt": mtt.MTTConfig}


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
    iterations to that directory; ``resume=True`` continues from its last checkpoint. Extra objects:
    ``pool=`` (dd: pretrained weights), ``source=`` (labels: the Dataset the base images come from),
    ``experts=`` (mtt: an experts directory or ``ExpertBuffer``, required).
    """
    if method not in METHODS:
        raise DistilsetError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    extras = {k: options.pop(k) for k in ("pool", "source", "experts") if k in options}
    fields = CONFIGS[method].__dataclass_fields__
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise DistilsetError(f"unknown option(s) for {method}: {', '.join(unknown)}")
    cfg = CONFIGS[method](**options)
    if method == "dd":
        distiller = dd.DatasetDistillation(data, cfg, seed=seed, pool=extras.get("pool"), device=device)
    elif method == "mtt":
        if "experts" not in extras:
            raise DistilsetError("mtt needs expert trajectories: experts=DIR (make them with `distilset experts`)")
        distiller = mtt.MTT(data, extras["experts"], cfg, seed=seed, device=device)
    else:
        distiller = labels.LabelDistillation(data, cfg, seed=seed, source=extras.get("source"), device=device)
    run_cfg = RunConfig(iterations=iterations, out=Path(out) if out else None, checkpoint_every=checkpoint_every,
                        eval_every=eval_every, resume=resume, progress=progress)  # fmt: skip
    return run(distiller, run_cfg, quick_eval=getattr(distiller, "quick_eval", None))


__all__ = ["METHODS", "distill"]
