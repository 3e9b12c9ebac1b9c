"""Baselines scored by the same harness: random real subset, class mean, k-means centroids, herding, full data.

Each returns a SyntheticSet with ``ipc`` items per class (``full`` returns the whole training set).
- random: ``ipc`` real training images per class, drawn without replacement.
- mean: the class mean image for ipc 1; for ipc > 1 the means of ``ipc`` random, equal parts of the class.
- kmeans: per class, the ``ipc`` centroids of k-means (k-means++ seeding, Lloyd iterations) in pixel space.
- herding: per class, greedy herding (Welling 2009) in pixel space: each pick brings the running mean of the
  picks closest to the class mean. (DC herds in the feature space of a trained ConvNet; pass ``embed`` to do
  that.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distilset.config import check_seed
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.progress import Progress
from distilset.recipes import KernelRidge, Replay, Standard, Teacher
from distilset.synset import SyntheticSet

BASELINES = ("random", "mean", "kmeans", "herding", "full")


def _class_sizes_check(data: Dataset, ipc: int) -> None:
    if ipc < 1:
        raise ConfigError(f"`ipc` must be >= 1, got {ipc}")
    data.require_per_class(ipc)


def _make_set(data: Dataset, images: torch.Tensor, labels: torch.Tensor, method: str, config: dict) -> SyntheticSet:
    return SyntheticSet.for_dataset(
        data, images.contiguous().clone(), labels.contiguous().clone(), method, config=config
    )


def _per_class(
    data: Dataset,
    ipc: int,
    pick: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor],
    seed: int,
    progress: Progress,
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(data.num_classes):
        xc = data.train_x[data.class_indices(c)]
        images.append(pick(xc, ipc, g))
        labels.append(torch.full((ipc,), c, dtype=torch.int64))
        progress.update()
    progress.close()
    return torch.cat(images), torch.cat(labels)


def _mean(xc: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    parts = torch.randperm(len(xc), generator=g).tensor_split(k)  # exactly k parts (chunk may give fewer)
    return torch.stack([xc[p].mean(0) for p in parts])


def kmeans_centroids(x: torch.Tensor, k: int, g: torch.Generator, iters: int = 100) -> torch.Tensor:
    """k-means on flattened ``x`` with k-means++ seeding; returns k centroids shaped like x's items."""
    flat = x.reshape(len(x), -1).double()
    first = int(torch.randint(len(flat), (1,), generator=g))
    centres = [flat[first]]
    d2 = ((flat - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        nxt = int(torch.multinomial(probs, 1, generator=g))
        centres.append(flat[nxt])
        d2 = torch.minimum(d2, ((flat - flat[nxt]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(flat, c).argmin(1)
        new = torch.stack([flat[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return c.to(x.dtype).reshape(k, *x.shape[1:])


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k items chosen greedily so the running mean of the picks tracks the class mean."""
    f = features.reshape(len(features), -1).double()
    mu = f.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool)
    for t in range(1, k + 1):
        dist = ((mu - (total + f) / t) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += f[i]
    return torch.tensor(chosen)


def baseline(
    name: str,
    data: Dataset,
    ipc: int = 10,
    seed: int = 0,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> SyntheticSet:
    """Build baseline ``name`` (one of BASELINES) with ``ipc`` items per class; ``progress``: per class."""
    if name not in BASELINES:
        raise DistilsetError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    check_seed(seed)
    if name == "full":
        return _make_set(data, data.inputs(data.train_x), data.train_y, "full", {"baseline": "full"})
    _class_sizes_check(data, ipc)
    config = {"baseline": name, "ipc": ipc, "seed": seed}
    bar = Progress(data.num_classes, f"baseline {name}", progress)
    if name == "random":
        idx = data.sample_per_class(ipc, torch.Generator().manual_seed(seed))
        images, labels = data.inputs(data.train_x[idx]), data.train_y[idx]
    elif data.token_embedding is not None:
        raise DistilsetError(
            f"the {name} baseline needs images or embedded vectors; {data.info.name} holds token ids "
            "(random and full work on it)"
        )
    elif name == "mean":
        images, labels = _per_class(data, ipc, _mean, seed, bar)
    elif name == "kmeans":
        images, labels = _per_class(data, ipc, lambda xc, k, g: kmeans_centroids(xc, k, g), seed, bar)
    else:

        def pick(xc: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
            with torch.no_grad():
                feats = embed(xc) if embed is not None else xc
            return xc[herding_select(feats, k)]

        images, labels = _per_class(data, ipc, pick, seed, bar)
        config["features"] = "embed" if embed is not None else "pixels"
    return _make_set(data, images, labels, name, config)


def random_real_like(syn: SyntheticSet, data: Dataset, seed: int = 0) -> SyntheticSet:
    """Random real images as many per class as ``syn`` holds (by its hard labels; drawn with ``seed``, class after
    class), set up to be scored like for like: the same network with the same options and init, the same ZCA, and
    the same recipe (plain training; kernel regression, then with their one-hot labels; the teacher recipe, with the
    set's teacher, DD-Ranking's pairing). A replay of learned steps (Dataset Distillation) is followed too: each
    real image takes the place of a synthetic one of its class, so the same init, step order and learned lrs train
    on it."""
    check_seed(seed)
    if syn.zca is not None and data.zca is None:
        data = data.with_zca()  # the set's space: its ZCA is the dataset's, fitted the same way
    slots = syn.hard_labels().cpu()
    counts = torch.bincount(slots, minlength=data.num_classes).tolist()
    g = torch.Generator().manual_seed(seed)
    if len(set(counts)) == 1:  # balanced: the random baseline's own draw
        idx = data.sample_per_class(counts[0], g)
    else:
        idx = []
        for c, n in enumerate(counts):
            pool = data.class_indices(c)
            if n > len(pool):
                raise DistilsetError(
                    f"the set holds {n} items of class {c} ({data.info.class_names[c]!r}) but the data has "
                    f"{len(pool)} training images of it, so random real images cannot match its count"
                )
            idx.append(pool[torch.randperm(len(pool), generator=g)[:n]])
        idx = torch.cat(idx)
    images, labels = data.inputs(data.train_x[idx]), data.train_y[idx]
    if isinstance(syn.recipe, Replay):  # into the set's slots: slot i of class c takes a real image of class c
        order = torch.argsort(slots, stable=True)
        images, labels = images[torch.argsort(order)], labels[torch.argsort(order)]
    real = _make_set(data, images, labels, "random", {"baseline": "random", "like": syn.method, "seed": seed})
    real.net = dict(syn.net) if syn.net else syn.net
    if isinstance(syn.recipe, (Standard, KernelRidge)):
        real.recipe = syn.recipe
    elif isinstance(syn.recipe, Teacher):
        real.recipe, real.teacher = syn.recipe, syn.teacher
    elif isinstance(syn.recipe, Replay):
        real.recipe, real.lrs, real.step_order, real.init_params = syn.recipe, syn.lrs, syn.step_order, syn.init_params
    return real
