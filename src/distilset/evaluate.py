"""The evaluation harness: train fresh networks on a SyntheticSet by a training recipe, report test accuracy.

Protocols (written into every result, with the full recipe used):
- ``recipe`` (default): the set's own training recipe (``SyntheticSet.recipe``): the replay of its learned
  steps for Dataset Distillation sets, standard training with the learned lr and DSA for MTT sets, the
  paper's retraining for label-distillation sets, DC's protocol for baselines.
- ``standard``: DC's protocol whatever made the set: SGD momentum 0.9, weight decay 5e-4, lr 0.01, batch
  256, 300 epochs (1000 with DSA), lr x0.1 at half, with the set's DSA strategy and texture crops if any.
  Order-agnostic: it sees the images and labels, not a learned recipe; a check that a set transfers.
- ``teacher``: the teacher recipe (``recipes.Teacher``: soft labels of a trained teacher on augmented views,
  SRe2L's and RDED's evaluation) applied to *any* set, with the teacher given (``teacher=``, ``--teacher DIR``)
  or the set's own; the set's own teacher recipe when it has one. Random real images trained this way are the
  like-for-like baseline of a set made for this recipe (DD-Ranking's point: the teacher's labels are part of the
  recipe). Giving a teacher without a protocol chooses this one. A set with stored views (``distilset relabel``:
  FKD's stored crops and soft labels) trains on them, running no teacher, when it is trained by its own recipe
  unchanged and with its own teacher.
Options given to ``evaluate`` (``lr=``, ``epochs=``, ``optimizer=``, ... any field of ``recipes.Standard``, or of
``recipes.Teacher`` under the teacher protocol) override the chosen recipe.

Accuracy is the *final* test accuracy, mean and population std (as DC's ``np.std``) over ``repeats``
networks with seeds ``seed, seed + 1, ...``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distilset.config import check_seed
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.files import EVALUATIONS
from distilset.io import write_json
from distilset.jobs import run_jobs
from distilset.kernels import architecture, centred_one_hot, krr
from distilset.nets import create_net, list_nets
from distilset.nets.registry import classic_net_for, fit_net_to_input
from distilset.progress import Progress
from distilset.recipes import (
    KIP_TRANSFER,
    KernelRidge,
    Recipe,
    Replay,
    Standard,
    Teacher,
    recipe_to_json,
    teacher_recipe,
)
from distilset.relabel import StoredViews
from distilset.runtime import resolve_precision
from distilset.synset import SyntheticSet
from distilset.teachers import TeacherNet, load_teacher
from distilset.train import accuracy, fit, replay

PROTOCOLS = ("recipe", "standard", "teacher")
STANDARD_FIELDS = tuple(f.name for f in dataclasses.fields(Standard))
TEACHER_FIELDS = tuple(f.name for f in dataclasses.fields(Teacher))


@dataclass
class EvalResult:
    """Accuracies of fresh nets trained on a set, with everything needed to reproduce them."""

    protocol: str
    net: str
    net_kwargs: dict
    dataset: str
    recipe: dict
    repeats: int
    seeds: list[int]
    runs: list[float]
    accuracy_mean: float
    accuracy_std: float
    wall_time_s: float
    settings: dict = field(default_factory=dict)
    warning: str = ""
    """Set when the accuracy is at chance (``at_chance``): the numbers are not a result to compare."""

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{100 * self.accuracy_mean:.2f} ± {100 * self.accuracy_std:.2f} % test accuracy "
            f"({self.repeats} nets, protocol {self.protocol}: {self.settings.get('recipe_text', '')}; "
            f"{self.net}, {self.wall_time_s:.1f} s)" + (f"; {self.warning}" if self.warning else "")
        )


def at_chance(accuracy: float, num_classes: int) -> str:
    """A warning when ``accuracy`` is within a quarter of chance (1 / classes) of it or below, else ""."""
    if accuracy <= 1.25 / num_classes:
        return (
            f"at chance ({100 / num_classes:.1f} % for {num_classes} classes): the training diverged or did not "
            "learn; try a lower learning rate or another recipe"
        )
    return ""


def append_dated(path: Path, rows: list[dict], row: dict) -> Path:
    """Rewrite ``path`` (atomically) as ``rows`` (what it held) plus ``row`` with today's date: a record file."""
    return write_json(path, [*rows, {**row, "date": datetime.date.today().isoformat()}])


def record_evaluation(directory: str | os.PathLike, result: EvalResult) -> Path:
    """Append ``result`` (with today's date) to ``DIR/evaluations.json``, rewriting it atomically."""
    return append_dated(Path(directory) / EVALUATIONS, load_evaluations(directory), result.to_json())


def load_records(path: Path, is_row: Callable[[Any], bool], what: str) -> list[dict]:
    """The rows of a record file (``evaluations.json``, ``scores.json``; [] when absent), each checked by ``is_row``;
    a damaged file or row is refused, naming it (``what``: one row's name)."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DistilsetError(f"{path} is unreadable ({e}); delete it (it only records earlier results)") from e
    for i, row in enumerate(rows if isinstance(rows, list) else [None]):
        if not (isinstance(row, dict) and is_row(row)):
            raise DistilsetError(f"{path}: entry {i} is not {what}; delete the file or that entry")
    return rows


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def load_evaluations(directory: str | os.PathLike) -> list[dict]:
    """The evaluations recorded beside a set ([] when none); a damaged file is refused, naming it."""

    def is_row(row: dict) -> bool:
        return (
            all(_fraction(row.get(k)) for k in ("accuracy_mean", "accuracy_std"))  # fractions, not percentages
            and isinstance(row.get("wall_time_s"), (int, float))
            and math.isfinite(row["wall_time_s"])
            and isinstance(row.get("runs"), list)
            and all(_fraction(r) for r in row["runs"])
            and isinstance(row.get("protocol"), str)
            and isinstance(row.get("net"), str)
        )

    return load_records(Path(directory) / EVALUATIONS, is_row, "an evaluation")


def training_recipe(syn: SyntheticSet, protocol: str = "recipe", flip: bool = True, **overrides) -> Recipe:
    """The recipe ``evaluate`` trains with: the set's own, DC's protocol, or the teacher recipe (the set's own, else
    the defaults for its size, with flips when ``flip``: whether the dataset allows them); ``overrides`` are fields
    of the chosen Standard or Teacher recipe."""
    if protocol not in PROTOCOLS:
        raise DistilsetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    unknown = sorted(set(overrides) - set(STANDARD_FIELDS) - set(TEACHER_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {', '.join(unknown)}; options: "
            f"{', '.join(dict.fromkeys(STANDARD_FIELDS + TEACHER_FIELDS))}"
        )
    if protocol == "teacher":
        base = syn.recipe if isinstance(syn.recipe, Teacher) else teacher_recipe(len(syn), syn.num_classes, flip)
    elif protocol == "recipe":
        base = syn.recipe
    elif isinstance(syn.recipe, KernelRidge):  # regression targets: finite nets fit them as KIP's transfer does
        base = KIP_TRANSFER
    else:
        own = syn.recipe if isinstance(syn.recipe, Standard) else Standard()
        base = Standard(dsa=own.dsa, crop=own.crop, loss=own.loss)
    if not overrides:
        return base
    if isinstance(base, KernelRidge):
        raise ConfigError(
            f"{', '.join(f'`{k}`' for k in overrides)} set(s) standard training, but this set's recipe is kernel "
            "regression; add --protocol standard (protocol='standard') to train finite networks on it"
        )
    if isinstance(base, Replay):
        raise ConfigError(
            f"{', '.join(f'`{k}`' for k in overrides)} set(s) standard training, but this set's recipe replays its "
            "learned steps; add --protocol standard (protocol='standard') to train it the standard way"
        )
    own = STANDARD_FIELDS if isinstance(base, Standard) else TEACHER_FIELDS
    foreign = [k for k in overrides if k not in own]
    if foreign:
        recipe, other = ("standard", "teacher") if isinstance(base, Standard) else ("teacher", "standard")
        raise ConfigError(
            f"{', '.join(f'`{k}`' for k in foreign)} belong(s) to the {other} recipe, but this evaluation trains by "
            f"the {recipe} recipe ({base.describe()}); choose the protocol whose options you give"
        )
    if "epochs" in overrides and "steps" not in overrides:
        overrides = {**overrides, "steps": None}  # an explicit epoch count replaces a step budget
    return dataclasses.replace(base, **overrides)


def align_test_data(syn: SyntheticSet, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the test split into the set's preprocessing (normalisation, ZCA) so accuracy is honest."""
    crop = syn.recipe.crop if syn.is_texture else None
    shape = syn.input_shape
    if (syn.images.ndim != 4 or len(data.image_shape) != 3) and tuple(syn.image_shape) != tuple(data.image_shape):
        raise DistilsetError(
            f"set images have shape {tuple(syn.image_shape)} per item but {data.info.name} has inputs of "
            f"{tuple(data.image_shape)}: images (N, C, H, W) of that size, or the embedded inputs of a text dataset; "
            f"evaluate on the dataset the set was made from (`dataset` {syn.dataset or '?'})"
        )
    if syn.images.ndim == 4 and crop and tuple(data.test_x.shape[2:]) != tuple(crop):
        raise DistilsetError(
            f"the set's recipe trains on {tuple(crop)} crops of its {tuple(syn.image_shape[1:])} canvases, but "
            f"{data.info.name}'s test images are {tuple(data.test_x.shape[2:])}: the crop must be the test images' "
            f"size; evaluate on the dataset the set was made from (`dataset` {syn.dataset or '?'})"
        )
    if syn.images.ndim == 4 and tuple(data.test_x.shape[1:]) != shape:
        raise DistilsetError(
            f"set images are {syn.image_shape} but {data.info.name} has {tuple(data.test_x.shape[1:])};"
            f" evaluate on the dataset the set was made from (`dataset` {syn.dataset or '?'})"
        )
    if data.num_classes != syn.num_classes:
        raise DistilsetError(f"set has {syn.num_classes} classes, {data.info.name} has {data.num_classes}")
    if syn.dataset and syn.dataset != data.info.name and syn.class_names != data.info.class_names:
        raise DistilsetError(
            f"the set was made from {syn.dataset} (classes {', '.join(syn.class_names[:3])}, ...) but is evaluated on "
            f"{data.info.name} (classes {', '.join(data.info.class_names[:3])}, ...); evaluate it on `dataset` "
            f"{syn.dataset}"
        )
    x = data.inputs(data.test_x)  # token ids become their embedded rows: every net can score them
    if data.zca is not None:
        if syn.zca is None:
            raise DistilsetError("the dataset is ZCA-whitened but the set is not; load the dataset without ZCA")
        return x, data.test_y
    if syn.images.ndim in (2, 4) and data.info.norm != syn.norm:
        x = syn.norm.normalize(data.info.norm.denormalize(x))
    if syn.zca is not None:
        x = syn.zca.apply(x)
    return x, data.test_y


def _load_init(model: nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    """Load stored initial parameters (buffers may be absent: they keep the fresh net's values)."""
    device = next(model.parameters()).device
    fresh = model.state_dict()
    wrong = [k for k, v in theta0.items() if k in fresh and fresh[k].shape != v.shape]
    if wrong:
        raise DistilsetError(
            f"the set's stored initial weights do not fit this net ({wrong[0]}: {list(theta0[wrong[0]].shape)} "
            f"stored, {list(fresh[wrong[0]].shape)} here); replay it on its own net (no `net` or `net_kwargs`) "
            "or use `protocol` standard"
        )
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in theta0.items()}, strict=False)
    params = dict(model.named_parameters())
    if unexpected or any(k in params for k in missing):
        raise DistilsetError(
            f"the set's stored initial weights do not fit this net (missing {missing}, unexpected {unexpected}); "
            "replay it on its own net or use `protocol` standard"
        )


def evaluate(
    syn: SyntheticSet,
    data: Dataset,
    net: str | None = None,
    net_kwargs: dict | None = None,
    protocol: str | None = None,
    repeats: int = 5,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    init_pool: list[dict[str, torch.Tensor]] | None = None,
    ray: bool | str | None = None,
    teacher: TeacherNet | str | os.PathLike | None = None,
    precision: str = "auto",
    **overrides,
) -> EvalResult:
    """Train ``repeats`` fresh nets on ``syn`` and test them on ``data``'s test split.

    ``net``: defaults to the set's distillation net (with its options), else ``convnet``. ``protocol``:
    ``recipe`` (the set's own training recipe, the default), ``standard`` (DC's protocol) or ``teacher`` (the
    teacher recipe, with ``teacher`` or the set's own teacher; the default when ``teacher`` is given).
    ``teacher``: a ``TeacherNet`` or the directory of one (``distilset teacher``, or a set carrying one).
    ``overrides``: fields of ``recipes.Standard`` (``lr``, ``epochs``, ``steps``, ``optimizer``, ``batch_size``,
    ``dsa``, ...) or, under the teacher recipe, of ``recipes.Teacher`` (``temperature``, ``cutmix``, ...).
    ``init_pool``: held-out pretrained weights for replaying a random-pretrained set. ``ray``: each repeat is a
    Ray task (``distilset.jobs``; CPU only), with the seed it has here, so the accuracies are the sequential ones.
    ``precision``: how the nets train and test (``distilset.runtime``): auto (bfloat16 autocast on a CPU with
    native bfloat16, else float32; measured at parity), float32 or bfloat16. A replay of learned steps always
    runs in float32. The precision used is recorded in ``settings``.
    """
    precision = resolve_precision(precision, device)
    protocol = protocol or ("teacher" if teacher is not None else "recipe")
    recipe = training_recipe(syn, protocol, flip=data.flips, **overrides)
    views = syn.views if syn.views is not None and teacher is None and recipe == syn.recipe else None
    teacher = _recipe_teacher(syn, recipe, teacher, device)
    if repeats < 1:
        raise ConfigError(f"`repeats` must be >= 1, got {repeats}")
    check_seed(seed)
    if isinstance(recipe, KernelRidge):
        if net is not None:
            raise DistilsetError(
                f"a kernel-regression set has no network to swap for {net!r}; add --protocol "
                "standard to train finite networks on it"
            )
        return _kernel_regression(syn, data, recipe, device)
    spec = syn.net or {}
    if net is None:  # the set's own net; a set without one: DC's ConvNet for images, else the classic choice
        net = spec.get("name", "convnet" if syn.images.ndim == 4 else classic_net_for(syn.image_shape)[0])
        net_kwargs = {**spec.get("kwargs", {}), **(net_kwargs or {})}
    shape = tuple(syn.image_shape[:1]) + tuple(data.image_shape[1:])
    net_kwargs, _ = fit_net_to_input(net, dict(net_kwargs or {}), shape)  # as create_net will: recorded as trained
    init = spec.get("init", "default") if net == spec.get("name") else "default"
    if isinstance(recipe, Replay):
        if spec and net != spec.get("name"):
            raise DistilsetError(
                f"the recipe was learned for net {spec.get('name')!r}; evaluate it with that net "
                "or use --protocol standard"
            )
        if recipe.init == "random-pretrained" and not init_pool:
            raise DistilsetError(
                "replaying a random-pretrained set needs held-out pretrained nets: pass init_pool= "
                "(distilset.methods.dd.pretrain_pool) or use --protocol standard"
            )
    if ray and device.startswith("cuda"):
        raise ConfigError("`ray` runs the evaluations as CPU tasks; evaluate on CUDA without `ray`, or on the CPU")
    test_x, test_y = align_test_data(syn, data)
    seeds = [seed + r for r in range(repeats)]
    start = time.perf_counter()
    bar = Progress(len(seeds), f"evaluate {net} ({protocol}), nets", progress)
    # inside each net: its own bar on a terminal; in a log, the nets' line hears how far the training is
    inner = False if ray else (True if bar.bar is not None else bar if bar.lines else False)
    in_shape = data.image_shape if syn.images.ndim != 4 else tuple(test_x.shape[1:])  # texture crops: the test size
    jobs = []
    for r, s in enumerate(seeds):
        theta0 = None
        if isinstance(recipe, Replay):
            theta0 = syn.init_params if recipe.init.startswith("fixed") else None
            if recipe.init == "random-pretrained":
                theta0 = init_pool[r % len(init_pool)]
        net_spec = (net, in_shape, init, net_kwargs)
        jobs.append((syn, recipe, net_spec, theta0, test_x, test_y, s, device, inner, teacher, views, precision))
    runs = run_jobs(_train_and_test, jobs, ray=ray, on_done=lambda i, acc: bar.update({"acc": acc}))
    bar.close()
    wall = time.perf_counter() - start
    mean = sum(runs) / len(runs)
    std = math.sqrt(sum((r - mean) ** 2 for r in runs) / len(runs))
    return EvalResult(
        protocol=protocol,
        net=net,
        net_kwargs=net_kwargs,
        dataset=data.info.name,
        recipe=recipe_to_json(recipe),
        repeats=repeats,
        seeds=seeds,
        runs=runs,
        accuracy_mean=mean,
        accuracy_std=std,
        wall_time_s=wall,
        warning=at_chance(mean, data.num_classes),
        settings={
            "device": device,
            "set_size": len(syn),
            "init": init,
            "recipe_text": recipe.describe(),
            "precision": "float32" if isinstance(recipe, Replay) else precision,
            **({"teacher": teacher.spec()} if teacher is not None else {}),
            **({"views": f"stored: {views.epochs} epochs, top-{views.top_k}"} if views is not None else {}),
        },
    )


def _recipe_teacher(
    syn: SyntheticSet, recipe: Recipe, teacher: TeacherNet | str | os.PathLike | None, device: str
) -> TeacherNet | None:
    """The teacher a teacher recipe trains against (the one given, else the set's own), checked against the set;
    None for the other recipes, which refuse a teacher they would not use."""
    if not isinstance(recipe, Teacher):
        if teacher is not None:
            raise ConfigError(
                f"`teacher` is used by the teacher recipe, but this evaluation trains by "
                f"{recipe.describe()}; drop `teacher`, or choose `protocol` teacher"
            )
        return None
    if teacher is not None and not isinstance(teacher, TeacherNet):
        teacher = load_teacher(teacher)
    teacher = teacher if teacher is not None else syn.teacher
    if teacher is None:
        raise DistilsetError(
            "the teacher protocol trains against a teacher's soft labels, and this set carries none: "
            "give `teacher`, a directory made by `distilset teacher`"
        )
    teacher.check_fits(syn.image_shape, syn.num_classes, syn.norm, syn.zca is not None, syn.dataset)
    return teacher.to(device)


def _train_and_test(
    syn: SyntheticSet,
    recipe: Recipe,
    net_spec: tuple,
    theta0: dict[str, torch.Tensor] | None,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    seed: int,
    device: str,
    bar: bool | Progress,
    teacher: TeacherNet | None = None,
    views: StoredViews | None = None,
    precision: str = "float32",
) -> float:
    """One repeat of ``evaluate``: a fresh net of ``net_spec`` (name, input shape, init, options) with seed ``seed``
    (started from ``theta0`` when given), trained on the set by its recipe (against ``teacher``'s outputs under a
    teacher recipe, or the set's stored ``views``), its test accuracy; ``precision`` of the training and the test
    (float32 for a replay)."""
    net, in_shape, init, net_kwargs = net_spec
    model = create_net(net, in_shape, syn.num_classes, seed=seed, init=init, **net_kwargs).to(device)
    x, y = syn.images.to(device), syn.labels.to(device)
    if isinstance(recipe, Replay):
        if theta0 is not None:
            _load_init(model, theta0)
        replay(model, x, y, syn.lrs, syn.step_order)
        precision = "float32"
    else:
        module = teacher.module.to(device) if teacher is not None and views is None else None
        fit(model, x, y, recipe, seed=seed, progress=bar, teacher=module, views=views, precision=precision)
    return accuracy(model, test_x.to(device), test_y.to(device), precision=precision)


def _kernel_regression(syn: SyntheticSet, data: Dataset, recipe: KernelRidge, device: str) -> EvalResult:
    """Test accuracy of kernel ridge regression on the set: deterministic, one run."""
    start = time.perf_counter()
    test_x, test_y = align_test_data(syn, data)
    net = architecture(recipe.arch, recipe.depth)
    x = syn.images.to(device)
    y = syn.labels.to(device).double() if syn.soft else centred_one_hot(syn.labels.to(device), syn.num_classes)
    with torch.no_grad():
        k_ss = net.kernel(x, x, get=recipe.kernel)
        k_ts = net.kernel(test_x.to(device), x, get=recipe.kernel)
        predictions = krr(k_ss, k_ts, y, reg=recipe.reg).argmax(1)
    acc = float((predictions.cpu() == test_y.cpu()).double().mean())
    return EvalResult(
        protocol="recipe",
        net=f"kernel:{recipe.arch}",
        net_kwargs={"depth": recipe.depth},
        dataset=data.info.name,
        recipe=recipe_to_json(recipe),
        repeats=1,
        seeds=[0],
        runs=[acc],
        accuracy_mean=acc,
        accuracy_std=0.0,
        wall_time_s=time.perf_counter() - start,
        warning=at_chance(acc, data.num_classes),
        settings={"device": device, "set_size": len(syn), "recipe_text": recipe.describe()},
    )


def evaluate_nets(
    syn: SyntheticSet,
    data: Dataset,
    nets: list[str],
    protocol: str | None = None,
    ray: bool | str | None = None,
    **kwargs,
) -> list[EvalResult]:
    """The set trained with each network of ``nets`` in turn (cross-architecture evaluation), one result each.

    The set's own network keeps its options (width, depth, init); the others take their defaults. Without a
    ``protocol``, every net gets the set's recipe, except that a replay recipe (tied to the net it was learned
    for) or a kernel-regression recipe gives way to DC's protocol on the other nets; with a ``teacher`` in
    ``kwargs`` every net gets the teacher recipe. ``kwargs``: as ``evaluate`` (repeats, seed, teacher, overrides).
    With ``ray`` each network is a Ray task (``distilset.jobs``).
    """
    unknown = [n for n in nets if n not in list_nets()]
    if unknown or not nets:
        raise ConfigError(f"unknown net(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(list_nets())}")
    own = (syn.net or {}).get("name", "convnet")
    if ray and str(kwargs.get("device", "cpu")).startswith("cuda"):
        raise ConfigError("`ray` runs the evaluations as CPU tasks; evaluate on CUDA without `ray`, or on the CPU")
    jobs = []
    for name in nets:
        chosen = protocol
        if chosen is None and kwargs.get("teacher") is not None:
            chosen = "teacher"
        if chosen is None and isinstance(syn.recipe, (Replay, KernelRidge)) and name != own:
            chosen = "standard"
        jobs.append(
            (syn, data, None if name == own else name, chosen, {**kwargs, "progress": False} if ray else kwargs)
        )
    overrides = {k: v for k, v in kwargs.items() if k in STANDARD_FIELDS or k in TEACHER_FIELDS}
    for _, _, _, chosen, _ in jobs:  # every net's recipe is checked before the first trains
        training_recipe(syn, chosen or "recipe", flip=data.flips, **overrides)
    return run_jobs(_evaluate_job, jobs, ray=ray)


def _evaluate_job(syn: SyntheticSet, data: Dataset, net: str | None, protocol: str | None, kwargs: dict) -> EvalResult:
    return evaluate(syn, data, net=net, protocol=protocol, **kwargs)


def transfer_accuracy(results: list[EvalResult], own: str) -> float | None:
    """Mean accuracy over the networks other than the set's own (``None`` when there is none); kernel regression
    (a kernel set's own evaluation) is not a network and not counted."""
    others = [r.accuracy_mean for r in results if r.net != own and not r.net.startswith("kernel:")]
    return sum(others) / len(others) if others else None


__all__ = [
    "EVALUATIONS",
    "EvalResult",
    "PROTOCOLS",
    "align_test_data",
    "evaluate",
    "evaluate_nets",
    "load_evaluations",
    "record_evaluation",
    "training_recipe",
    "transfer_accuracy",
]
