"""DD-Ranking's robust scores (Li et al. 2025): is a set better than random real images, whatever the recipe?

A set's accuracy under its own recipe mixes what its images hold with what the recipe adds (soft labels from a
teacher, augmentation): random real images trained by the same recipe gain as much. DD-Ranking separates the two
with two scores, computed here by the one evaluation harness (``distilset.evaluate``), accuracies as fractions:

- **HLR**, hard-label recovery: acc(full training data, hard labels) - acc(set, hard labels). Both train by DC's
  protocol (``protocol="standard"``, cross-entropy) on the set's net, with the set's DSA where its own recipe is
  plain training with DSA; the set's labels become their argmax. Small is good: the set recovers what the full
  data gives.
- **IOR**, improvement over random: acc(set, its own recipe) - acc(random real images of the same count, the same
  recipe and net). ``distilset.random_real_like`` makes the random images (seeded): the same fixed init and
  learned steps for a replay set, the same teacher for a teacher-recipe set.
- **LRS**, label-robust score: alpha = w * IOR - (1 - w) * HLR, LRS = (e^alpha - e^-1) / (e - e^-1), in [0, 1]
  (DD-Ranking's normalisation); ``weight`` w = 0.5 by default, as on DD-Ranking's leaderboard.
- **ARS**, augmentation-robust score: beta = gamma * IOR(with augmentation) + (1 - gamma) * IOR(without), the same
  normalisation; ``gamma`` = 0.5 by default (DD-Ranking's ``ars_lambda``). "With augmentation" is the recipe's own
  (DSA, or the teacher recipe's crops, flips and CutMix), or, for a plain recipe without any, the dataset's DSA
  strategy; "without" turns all of it off and keeps everything else (the training length included). A replay of
  learned steps and kernel regression have no augmentation to take away: their ARS is ``None``.

The full-data accuracy is the expensive part; it is computed on demand and cached (``$DISTILSET_CACHE``, else
``~/.cache/distilset``, file ``full-accuracy.json``) under a key of the dataset, net, recipe, repeats, seed and step
budget, with the call that made it, so it is never reused for another recipe. Deviations from DD-Ranking: the
full data trains for at most ``full_steps`` minibatch steps (default 5000; DD-Ranking trains every evaluation for
300 epochs, which on a CPU is days for 60,000 images) and ``full_repeats`` nets (default 1); DD-Ranking also tunes
the learning rate of the random-image runs, which is not done here: they take the set's recipe as it is.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilset.baselines import baseline, random_real_like
from distilset.config import check_seed
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.evaluate import EvalResult, append_dated, evaluate, load_records, training_recipe
from distilset.files import SCORES
from distilset.io import write_json
from distilset.jsonread import load_json
from distilset.recipes import KernelRidge, Replay, Standard, Teacher, recipe_to_json
from distilset.runtime import resolve_precision
from distilset.synset import SyntheticSet

FULL_STEPS = 5000
"""Most minibatch steps the full-data run trains (DD-Ranking: 300 epochs, whatever the dataset's size)."""


def normalised(x: float) -> float:
    """DD-Ranking's map of a weighted accuracy difference in [-1, 1] onto [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


@dataclass
class Scores:
    """HLR, IOR, LRS and ARS of one set (see the module docstring), with every accuracy they come from."""

    dataset: str
    set_size: int
    net: str
    hlr: float
    ior: float
    lrs: float
    ars: float | None
    weight: float
    gamma: float
    accuracies: dict[str, dict[str, float]] = field(default_factory=dict)
    """``name -> {"mean", "std", "recipe"}`` for syn-any, rdm-any, syn-hard, full-hard (and the four ARS runs)."""
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        ars = f"ARS {100 * self.ars:.1f} %" if self.ars is not None else "ARS n/a (no augmentation to remove)"
        return (
            f"LRS {100 * self.lrs:.1f} %, {ars} (HLR {100 * self.hlr:+.1f} points, IOR {100 * self.ior:+.1f} "
            f"points; w {self.weight:g}, gamma {self.gamma:g}; {self.net}, {self.set_size} items)"
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _acc(result: EvalResult) -> dict[str, Any]:
    return {
        "mean": result.accuracy_mean,
        "std": result.accuracy_std,
        "runs": result.runs,
        "recipe": result.settings.get("recipe_text", result.recipe.get("kind", "")),
        "net": result.net,
    }


def _cache_file() -> Path:
    root = os.environ.get("DISTILSET_CACHE") or Path.home() / ".cache" / "distilset"
    return Path(root) / "full-accuracy.json"


def full_accuracy(
    data: Dataset,
    net: str,
    net_kwargs: dict,
    recipe: Standard,
    repeats: int = 1,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """acc(full training data, hard labels) by ``recipe`` on ``net``, from the cache when this exact run was made
    before (the key names the dataset and its size, the net, the recipe, repeats, seed and the precision of the
    training when not float32), else trained now and cached with the call that made it."""
    precision = resolve_precision(precision, device)
    key = json.dumps(
        {
            "dataset": data.info.name,
            "train": len(data.train_y),
            "zca": data.zca is not None,
            "net": net,
            "net_kwargs": net_kwargs,
            "recipe": recipe_to_json(recipe),
            "repeats": repeats,
            "seed": seed,
            **({"precision": precision} if precision != "float32" else {}),  # float32 entries predate the field
        },
        sort_keys=True,
    )
    path = _cache_file()
    cache = load_json(path) if path.exists() else {}
    if not isinstance(cache, dict):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("mean"), float) and 0 <= hit["mean"] <= 1:
        return {**hit, "cached": True}
    full = baseline("full", data)
    full.recipe = recipe
    result = evaluate(
        full,
        data,
        net=net,
        net_kwargs=net_kwargs,
        repeats=repeats,
        seed=seed,
        device=device,
        progress=progress,
        precision=precision,
    )
    row = {
        **_acc(result),
        "made_by": f"distilset.scores.full_accuracy({data.info.name!r}, {net!r}, {net_kwargs}, "
        f"{recipe.describe()!r}, repeats={repeats}, seed={seed}, precision={precision!r})",
        "date": datetime.date.today().isoformat(),
    }
    cache[key] = row
    write_json(path, cache)
    return {**row, "cached": False}


def _no_augmentation(recipe: Standard | Teacher) -> Standard | Teacher:
    if isinstance(recipe, Teacher):
        return dataclasses.replace(recipe, crop_scale=(1.0, 1.0), flip=False, cutmix=0.0, patches=1)
    return dataclasses.replace(
        recipe, dsa=None, epochs=recipe.epochs or recipe.total_epochs if not recipe.steps else None
    )


def _with_augmentation(recipe: Standard | Teacher, data: Dataset) -> Standard | Teacher | None:
    if isinstance(recipe, Teacher) or recipe.dsa:
        return recipe
    strategy = data.info.dsa_strategy if len(data.image_shape) == 3 else None
    if not strategy:
        return None
    return dataclasses.replace(
        recipe, dsa=strategy, epochs=recipe.epochs or recipe.total_epochs if not recipe.steps else None
    )


def scores(
    syn: SyntheticSet,
    data: Dataset,
    repeats: int = 5,
    seed: int = 0,
    weight: float = 0.5,
    gamma: float = 0.5,
    real_seed: int = 0,
    full_steps: int = FULL_STEPS,
    full_repeats: int = 1,
    device: str = "cpu",
    progress: bool = False,
    precision: str = "auto",
) -> Scores:
    """DD-Ranking's HLR, IOR, LRS and ARS of ``syn`` on ``data`` (module docstring). ``repeats`` fresh nets per
    accuracy (seeds ``seed``...), random real images drawn with ``real_seed``; ``weight`` (w) and ``gamma`` in [0, 1];
    the full data trains at most ``full_steps`` steps, ``full_repeats`` nets, cached; ``precision`` of every
    training, as ``evaluate``."""
    for name, value in (("weight", weight), ("gamma", gamma)):
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ConfigError(f"`{name}` is a weight from 0 to 1, got {value}")
    for name, value in (("repeats", repeats), ("full_steps", full_steps), ("full_repeats", full_repeats)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{name}` must be a count >= 1, got {value}")
    check_seed(seed)
    check_seed(real_seed)
    if syn.zca is not None and data.zca is None:
        data = data.with_zca()  # every run in the set's space: the full data and the random images too
    syn = dataclasses.replace(syn, views=None)  # stored views would fix the augmentation the ARS runs turn off
    precision = resolve_precision(precision, device)
    kw = {"repeats": repeats, "seed": seed, "device": device, "progress": progress, "precision": precision}
    real = random_real_like(syn, data, seed=real_seed)
    acc: dict[str, dict[str, Any]] = {}
    own, rdm = evaluate(syn, data, **kw), evaluate(real, data, **kw)
    acc["syn-any"], acc["rdm-any"] = _acc(own), _acc(rdm)

    plain = syn.recipe if isinstance(syn.recipe, Standard) else Standard()  # the set's images, hard labels
    hard = dataclasses.replace(
        syn,
        labels=syn.hard_labels(),
        recipe=plain,
        views=None,
        teacher=None,
        lrs=None,
        step_order=None,
        init_params=None,
    )
    standard = dataclasses.replace(training_recipe(hard, "standard", flip=data.flips), loss="ce")
    syn_hard = evaluate(hard, data, protocol="standard", **kw)
    acc["syn-hard"] = _acc(syn_hard)
    net, net_kwargs = syn_hard.net, syn_hard.net_kwargs
    per_epoch = -(-len(data.train_y) // standard.batch_size)
    steps = min(full_steps, standard.steps or standard.total_epochs * per_epoch)
    full_recipe = dataclasses.replace(standard, steps=steps, epochs=None)
    acc["full-hard"] = full_accuracy(
        data,
        net,
        net_kwargs,
        full_recipe,
        repeats=full_repeats,
        seed=seed,
        device=device,
        progress=progress,
        precision=precision,
    )

    hlr = acc["full-hard"]["mean"] - acc["syn-hard"]["mean"]
    ior = acc["syn-any"]["mean"] - acc["rdm-any"]["mean"]
    lrs = normalised(weight * ior - (1 - weight) * hlr)
    ars = None
    if not isinstance(syn.recipe, (Replay, KernelRidge)):
        aug = _with_augmentation(syn.recipe, data)
        if aug is not None:
            plain = _no_augmentation(aug)
            runs = {}
            for name, s in (("syn", syn), ("rdm", real)):
                for tag, recipe in (("aug", aug), ("naug", plain)):
                    if recipe == syn.recipe:  # the own-recipe runs above
                        runs[f"{name}-{tag}"] = acc[f"{name}-any"]
                        continue
                    twin = dataclasses.replace(s, recipe=recipe)
                    runs[f"{name}-{tag}"] = _acc(evaluate(twin, data, **kw))
            acc.update(runs)
            beta = gamma * (runs["syn-aug"]["mean"] - runs["rdm-aug"]["mean"]) + (1 - gamma) * (
                runs["syn-naug"]["mean"] - runs["rdm-naug"]["mean"]
            )
            ars = normalised(beta)
    return Scores(
        dataset=data.info.name,
        set_size=len(syn),
        net=own.net,
        hlr=hlr,
        ior=ior,
        lrs=lrs,
        ars=ars,
        weight=weight,
        gamma=gamma,
        accuracies=acc,
        settings={
            "repeats": repeats,
            "seed": seed,
            "real_seed": real_seed,
            "full_steps": steps,
            "full_repeats": full_repeats,
            "hard_recipe": standard.describe(),
            "device": device,
            "precision": precision,
        },
    )


def record_scores(directory: str | os.PathLike, result: Scores) -> Path:
    """Append ``result`` (with today's date) to ``DIR/scores.json``, rewriting it atomically."""
    return append_dated(Path(directory) / SCORES, load_scores(directory), result.to_json())


def load_scores(directory: str | os.PathLike) -> list[dict]:
    """The scores recorded beside a set ([] when none); a damaged file is refused, naming it."""

    def is_row(row: dict) -> bool:
        fraction = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1  # noqa: E731
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and -1 <= v <= 1  # noqa: E731
        accuracies = row.get("accuracies")
        return (
            fraction(row.get("lrs"))
            and (row.get("ars") is None or fraction(row["ars"]))
            and all(number(row.get(k)) for k in ("hlr", "ior", "weight", "gamma"))
            and isinstance(accuracies, dict)
            and all(
                isinstance(a, dict) and fraction(a.get("mean")) and number(a.get("std")) for a in accuracies.values()
            )
        )

    return load_records(Path(directory) / SCORES, is_row, "recorded scores (LRS and ARS in [0, 1])")
