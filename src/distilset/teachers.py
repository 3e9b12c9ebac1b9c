"""Teachers: networks trained once on the full training data, whose outputs the teacher recipe distils.

The teacher-era methods (SRe2L: Yin, Xing & Shen 2023; RDED: Sun et al. 2024) train a teacher first ("squeeze"),
make their images with it, and train every student on the teacher's soft labels of augmented views of the
set (``recipes.Teacher``). ``distilset teacher --dataset NAME --out DIR`` (``train_teacher``) trains one with the
one training loop (``train.fit``) and writes, atomically:

- ``DIR/teacher.safetensors``: the weights; the file's metadata holds the format and the teacher's spec (net,
  options, input shape, classes, the dataset, its normalisation, whether ZCA-whitened, its test accuracy), so
  the file alone rebuilds the network (``load_teacher``);
- ``DIR/teacher.json``: the spec, how it was trained (the resolved ``TeacherConfig`` and the reasons for the
  resolved values), the loss per epoch and the wall time;
- ``DIR/checkpoint/state.pt`` after every epoch (weights, optimiser, generator: read with ``weights_only=True``):
  ``resume=True`` (``--resume``) continues an interrupted training exactly where its last epoch ended.

A set made with a teacher carries a copy of it (``SyntheticSet.teacher``, saved as ``teacher.safetensors`` beside
the set, its spec in ``synset.json``); ``load_teacher`` accepts a teacher directory, a set directory or the file.
Everything read is checked: the spec's types and ranges, the weights' names, shapes and finiteness against the
network the spec builds; a missing, damaged or mismatched file is refused with one line naming it.

Defaults, sized for a CPU: a batch-norm ConvNet (RDED's CIFAR-10 "Conv3" teacher: width 128, depth fitted to the
input; SRe2L's recovery needs batch-norm statistics), Adam lr 1e-3 with a cosine decay, batch 256, random shifts
(DSA's crop, and flips where the dataset allows them), and ``ceil(100,000 / N)`` epochs for N training images
(at least 3, at most 30; random shifts only on inputs of 16 px or more): 3 epochs of Fashion-MNIST (the benchmark
rows record the teacher's training time), seconds for the 8x8 digits. The
papers' teachers are ResNet-18s trained for 200 epochs with SGD (SRe2L on CIFAR-100) or torchvision's ImageNet
weights; ``--net resnet18 --net-arg norm=batch --epochs 200`` asks for such a one.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from distilset import jsonread
from distilset.config import Config, auto, check_seed
from distilset.data.dataset import Dataset, Normalization
from distilset.errors import ConfigError, DistilsetError, Interrupted, SynsetFormatError
from distilset.files import TEACHER_CHECKPOINT, TEACHER_DIR, TEACHER_FILE, TEACHER_INFO
from distilset.io import load_torch, save_torch, write_bytes, write_json
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.nets.registry import read_net_spec
from distilset.recipes import Standard
from distilset.rundir import releases_locks
from distilset.train import accuracy, fit

FORMAT = "distilset.teacher"
CHECKPOINT = TEACHER_CHECKPOINT
"""The training state after the last finished epoch (not a distillation run's ``checkpoint/state.pt``, so that one
directory is never taken for the other)."""
MAX_CLASSES = 100_000


@dataclass
class TeacherNet:
    """A trained network and what rebuilds and places it: net name and options, input shape, classes, and the data
    space it was trained in (dataset, normalisation, ZCA), with its test accuracy."""

    net: str
    kwargs: dict
    in_shape: tuple[int, ...]
    num_classes: int
    module: nn.Module
    dataset: str = ""
    norm: Normalization = field(default_factory=Normalization)
    zca: bool = False
    test_accuracy: float | None = None
    train_images: int | None = None
    """How many training images it was trained on (None: not recorded)."""

    def spec(self) -> dict[str, Any]:
        return {
            "net": self.net,
            "kwargs": dict(self.kwargs),
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "dataset": self.dataset,
            **self.norm.to_json(),
            "zca": self.zca,
            "test_accuracy": self.test_accuracy,
            "train_images": self.train_images,
        }

    def describe(self) -> str:
        acc = f", {100 * self.test_accuracy:.1f} % test" if self.test_accuracy is not None else ""
        return f"{self.net} {self.kwargs or ''} teacher of {self.dataset or 'its dataset'}{acc}".replace("  ", " ")

    def to(self, device: str | torch.device) -> TeacherNet:
        self.module.to(device)
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The teacher's outputs on ``x`` in eval mode, in batches."""
        self.module.eval()
        return torch.cat([self.module(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def to_bytes(self) -> bytes:
        """The teacher file: the weights, with the spec in the file's metadata."""
        from safetensors.torch import save

        return save(self.state(), metadata={"format": FORMAT, "spec": json.dumps(self.spec())})

    def save(self, path: str | Path) -> Path:
        """Write the teacher file (atomically)."""
        return write_bytes(path, self.to_bytes())

    def check_data(self, data: Dataset) -> None:
        """``check_fits`` for a dataset: its input shape, classes, normalisation, ZCA and name."""
        self.check_fits(
            data.image_shape,
            data.num_classes,
            data.info.norm,
            data.zca is not None,
            data.info.name,
            what=f"the dataset {data.info.name}",
        )

    def check_fits(
        self,
        image_shape: tuple[int, ...],
        num_classes: int,
        norm: Normalization,
        zca: bool,
        dataset: str = "",
        what: str = "the set",
    ) -> None:
        """Refuse to teach data it was not trained for: another input shape, class count, normalisation, ZCA space
        or dataset."""
        problem = None
        if tuple(image_shape) != tuple(self.in_shape):
            problem = f"inputs {tuple(self.in_shape)}, {what} has {tuple(image_shape)}"
        elif num_classes != self.num_classes:
            problem = f"{self.num_classes} classes, {what} has {num_classes}"
        elif dataset and self.dataset and dataset != self.dataset:
            problem = f"dataset {self.dataset}, {what} is of {dataset}"
        elif zca != self.zca:
            problem = f"{'ZCA-whitened' if self.zca else 'plain'} inputs, {what} is {'whitened' if zca else 'not'}"
        elif not _close(norm.mean, self.norm.mean) or not _close(norm.std, self.norm.std):
            problem = f"inputs normalised by {self.norm.to_json()}, {what} by {norm.to_json()}"
        if problem:
            raise DistilsetError(
                f"the teacher does not fit {what}: it was trained on {problem}; train a teacher on "
                "this dataset (`distilset teacher`)"
            )


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))


def read_spec(obj: Any, where: str) -> dict[str, Any]:
    """A teacher spec read from a file, every field type- and range-checked (SynsetFormatError names it)."""
    try:
        spec = jsonread.mapping(obj, "teacher spec")
        name, kwargs, _ = read_net_spec({"name": spec.get("net"), "kwargs": spec.get("kwargs", {})})
        shape = spec.get("in_shape")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 3:
            raise DistilsetError(f"in_shape must be a list of 1 to 3 sizes, got {shape!r:.60}")
        in_shape = tuple(jsonread.whole(v, "in_shape", 1, 4096) for v in shape)
        classes = jsonread.whole(spec.get("num_classes"), "num_classes", 2, MAX_CLASSES)
        accuracy_ = spec.get("test_accuracy")
        if accuracy_ is not None:
            accuracy_ = jsonread.number(accuracy_, "test_accuracy")
            if not 0 <= accuracy_ <= 1:
                raise DistilsetError(f"test_accuracy must be a fraction from 0 to 1, got {accuracy_}")
        seen = spec.get("train_images")
        if seen is not None:
            seen = jsonread.whole(seen, "train_images", 1, 10**10)
        zca = spec.get("zca", False)
        if not isinstance(zca, bool):
            raise DistilsetError(f"zca must be true or false, got {zca!r:.40}")
        return {
            "net": name,
            "kwargs": kwargs,
            "in_shape": in_shape,
            "num_classes": classes,
            "dataset": jsonread.string(spec.get("dataset", ""), "dataset"),
            "norm": Normalization(spec.get("mean", [0.0]), spec.get("std", [1.0])),
            "zca": zca,
            "test_accuracy": accuracy_,
            "train_images": seen,
        }
    except DistilsetError as e:
        raise SynsetFormatError(f"{where}: the teacher's spec is invalid ({e}); {DAMAGED}") from e


DAMAGED = "restore the teacher from a copy or train it again (`distilset teacher`)"


def teacher_path(path: str | Path) -> Path:
    """The teacher file of a teacher directory or a set directory, or ``path`` itself when it is the file."""
    path = Path(path)
    return path / TEACHER_FILE if path.is_dir() else path


def load_teacher(path: str | Path, device: str = "cpu", spec: dict | None = None) -> TeacherNet:
    """The teacher in ``path`` (a teacher directory, a set directory or the ``teacher.safetensors`` file), in eval
    mode. ``spec``: the spec another file lists for it (a set's ``synset.json``), which the file must match."""
    file = teacher_path(path)
    if not file.is_file():
        raise SynsetFormatError(
            f"no teacher in {path} ({file.name} is missing); train one with `distilset teacher "
            "--dataset NAME --out DIR`, or give the directory that holds it"
        )
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no items())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SynsetFormatError(f"{file} is unreadable ({str(e)[:200]}); {DAMAGED}") from e
    if meta.get("format") != FORMAT:
        raise SynsetFormatError(f"{file} is not a distilset teacher (format field missing); {DAMAGED}")
    try:
        stored = json.loads(meta.get("spec", ""))
    except (json.JSONDecodeError, RecursionError) as e:
        raise SynsetFormatError(f"{file}: the teacher's spec is not JSON; {DAMAGED}") from e
    fields = read_spec(stored, str(file))
    if spec is not None and read_spec(spec, "the listing") != fields:
        raise SynsetFormatError(
            f"{file} is not the teacher the set lists (its spec differs); the files do not belong "
            "together: restore the set's own teacher.safetensors"
        )
    try:
        module = create_net(fields["net"], fields["in_shape"], fields["num_classes"], seed=0, **fields["kwargs"])
    except DistilsetError as e:
        raise SynsetFormatError(f"{file}: the teacher's net cannot be built ({e}); {DAMAGED}") from e
    _check_state(file, module.state_dict(), state)
    module.load_state_dict(state)
    module.to(device).eval().requires_grad_(False)
    return TeacherNet(module=module, **fields)


def _check_state(file: Path, want: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """The stored weights must be exactly those of the network the spec builds: names, shapes, dtypes, finite."""
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise SynsetFormatError(
            f"{file}: the weights do not fit the teacher's net (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); {DAMAGED}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape) or v.dtype != want[k].dtype:
            raise SynsetFormatError(
                f"{file}: weight {k} is {str(v.dtype)} {list(v.shape)}, the teacher's net has "
                f"{str(want[k].dtype)} {list(want[k].shape)}; {DAMAGED}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise SynsetFormatError(f"{file}: weight {k} holds NaN or inf; {DAMAGED}")


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherConfig(Config, NetOption):
    """How a teacher is trained (SRe2L's squeeze; defaults sized for a CPU, see the module docstring)."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {
        "net": "Network of the teacher (SRe2L's recovery needs batch-norm layers).",
        "net_kwargs": "Network options as KEY=VALUE, e.g. width=64 or norm=batch.",
    }
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "convnet-bn: a batch-norm ConvNet, its depth fitted to the input"}
    epochs: int | None = auto("ceil(100,000 / training images), from 3 to 30")
    """Passes over the training data."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimiser (SGD uses `momentum`)."""
    lr: float = 1e-3
    """Learning rate, decayed by a cosine to 1 % at the end."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """Weight decay."""
    batch_size: int = 256
    """Minibatch size."""
    augment: bool | None = auto(
        "on for inputs of 16 px or more; off on 8x8 digits (a one-pixel shift there cost "
        "the teacher 3 points of test accuracy: 95.8 vs 98.9 %)"
    )
    """Random shifts (DSA's crop) and, where the dataset allows them, flips of every training image."""

    def check(self) -> None:
        self.require_finite("lr", "momentum", "weight_decay")
        self.require_positive("lr", "epochs", "batch_size")
        self.require_at_least(0, "momentum", "weight_decay")

    def resolve(self, data: Dataset) -> tuple[TeacherConfig, dict[str, str]]:
        if len(data.image_shape) != 3 or data.token_embedding is not None:
            raise ConfigError(
                f"a teacher here classifies images (C, H, W); {data.info.name} has inputs of shape {data.image_shape}"
            )
        n, side = len(data.train_x), min(data.image_shape[1:])
        cfg, notes = self.fill_net(
            data.image_shape,
            ("convnet-bn", "a batch-norm ConvNet (RDED's Conv3 teacher; SRe2L matches batch-norm statistics)"),
            epochs=(min(30, max(3, math.ceil(100_000 / n))), f"ceil(100,000 / {n} training images), from 3 to 30"),
            augment=(side >= 16, f"{side} px inputs"),
        )
        create_net(cfg.net, data.image_shape, data.num_classes, seed=0, **cfg.net_kwargs)  # fails now, not later
        return cfg, notes

    def recipe(self, data: Dataset) -> Standard:
        strategy = None
        if self.augment:
            strategy = "crop_flip" if data.flips else "crop"
        return Standard(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            epochs=self.epochs,
            schedule="cosine",
            dsa=strategy,
        )


@releases_locks
def train_teacher(
    data: Dataset,
    out: str | Path | None = None,
    cfg: TeacherConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **options,
) -> TeacherNet:
    """Train a teacher on all of ``data``'s training images (``options``: fields of ``TeacherConfig``).

    With ``out`` it is written there (module docstring), with a checkpoint after every epoch; ``resume`` continues
    the checkpoint of an interrupted run with the same settings; a directory holding a finished teacher or
    another run is refused unless ``overwrite``."""
    from distilset.rundir import prepare_out

    if cfg is not None and options:
        raise ConfigError("give the teacher's settings as `cfg` or as options, not both")
    cfg, notes = (cfg or TeacherConfig(**options)).resolve(data)
    check_seed(seed)
    log = log or (lambda message: None)
    identity = json.dumps(
        {
            "seed": seed,
            "config": cfg.to_json(),
            "dataset": data.info.name,
            "train": len(data.train_x),
            "zca": data.zca is not None,
        }
    )
    state = None
    if out is not None:
        out = prepare_out(out, resume=resume, overwrite=overwrite)
        state = _load_checkpoint(out, identity) if resume else None
        if state and state["history"] and state["history"][-1]["epoch"] >= cfg.epochs and (out / TEACHER_FILE).exists():
            raise DistilsetError(
                f"the teacher in {out} is finished ({cfg.epochs} epochs): use it as it is, or train "
                "another in a new `out` directory"
            )
    elif resume:
        raise ConfigError("`resume` needs `out`, the directory of the interrupted teacher")
    module = create_net(cfg.net, data.image_shape, data.num_classes, seed=seed, **cfg.net_kwargs).to(device)
    recipe = cfg.recipe(data)
    log(f"teacher: {cfg.net} {cfg.net_kwargs or ''} on {data.info.name}, {cfg.epochs} epochs ({recipe.describe()})")
    for k, why in notes.items():
        log(f"  auto {k}: {why}")
    history: list[dict] = list(state["history"]) if state else []
    t0 = time.perf_counter() - (history[-1]["time_s"] if history else 0.0)

    def on_state(fit_state: dict) -> None:
        row = {"epoch": fit_state["epoch"], "time_s": round(time.perf_counter() - t0, 1)}
        history.append(row)
        if out is not None:
            save_torch(out / CHECKPOINT, {"identity": identity, "fit": fit_state, "history": json.dumps(history)})
        if row["epoch"] % max(1, cfg.epochs // 10) == 0:
            log(f"  epoch {row['epoch']}/{cfg.epochs} ({row['time_s']:.0f} s)")

    x, y = data.train_x.to(device), data.train_y.to(device)
    try:
        fit(
            module,
            x,
            y,
            recipe,
            seed=seed,
            progress=progress,
            on_state=on_state,
            resume=state["fit"] if state else None,
            desc="teacher",
        )
    except KeyboardInterrupt as e:
        done = history[-1]["epoch"] if history else 0
        where = (
            (
                f"; the state after epoch {done} is saved in {out / CHECKPOINT}: run the same command with "
                "`resume` to continue"
            )
            if out is not None and done
            else ""
        )
        raise Interrupted(f"teacher training stopped in epoch {done + 1} of {cfg.epochs}{where}") from e
    acc = accuracy(module, data.test_x.to(device), data.test_y.to(device))
    module.eval().requires_grad_(False)
    teacher = TeacherNet(
        cfg.net,
        dict(cfg.net_kwargs),
        tuple(data.image_shape),
        data.num_classes,
        module,
        dataset=data.info.name,
        norm=data.info.norm,
        zca=data.zca is not None,
        test_accuracy=acc,
        train_images=len(data.train_x),
    )
    log(f"teacher: {100 * acc:.2f} % test accuracy after {cfg.epochs} epochs ({time.perf_counter() - t0:.0f} s)")
    if out is not None:
        teacher.save(out / TEACHER_FILE)
        write_json(
            out / TEACHER_INFO,
            {
                "format": FORMAT,
                "spec": teacher.spec(),
                "seed": seed,
                "config": cfg.to_json(),
                "resolved": notes,
                "recipe": recipe.to_json(),
                "history": history,
                "seconds": round(time.perf_counter() - t0, 1),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}",
            },
        )
    return teacher


def _load_checkpoint(out: Path, identity: str) -> dict | None:
    path = out / CHECKPOINT
    if not path.exists():
        return None
    state = load_torch(path)
    if not isinstance(state, dict) or not {"identity", "fit", "history"} <= set(state):
        raise DistilsetError(f"{path} is not a teacher checkpoint; delete {path.parent} to start over")
    if state["identity"] != identity:
        raise DistilsetError(
            f"cannot resume {out}: its teacher was started with other settings, seed or data; "
            "resume with the same command or start a new `out` directory"
        )
    try:
        history = json.loads(state["history"])
    except (TypeError, json.JSONDecodeError) as e:
        raise DistilsetError(f"{path} is damaged (its history); delete {path.parent} to start over") from e
    return {"fit": state["fit"], "history": history}


def teacher_for(
    path: str | Path | None,
    data: Dataset,
    out: Path | None,
    seed: int,
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> TeacherNet:
    """The teacher a method distils with: the one in ``path`` (a teacher or set directory), trained there first if
    it holds none yet (a new directory under an existing one: a path that looks like a misspelt file or directory
    is refused); without ``path``, the one in ``OUT/teacher`` (trained there, or continued after an interruption),
    or a fresh one kept in memory when there is no output directory. A directory holding something else (a set
    without a teacher, another run) is refused."""
    where = Path(path) if path is not None else (out / TEACHER_DIR if out is not None else None)
    if where is not None and teacher_path(where).is_file():
        teacher = load_teacher(where, device)
    else:
        if path is not None and (where.suffix == ".safetensors" or not where.parent.is_dir()):
            raise DistilsetError(
                f"`teacher` {where} does not exist; give a teacher directory (`distilset teacher "
                "--out DIR`), a set that carries one, or a new directory to train one into"
            )
        if path is not None and where.is_dir() and any(where.iterdir()) and not (where / CHECKPOINT).is_file():
            raise DistilsetError(
                f"`teacher` {where} holds no teacher ({TEACHER_FILE}); give a directory made by "
                "`distilset teacher` (or a set that carries one), or a new directory to train one into"
            )
        resume = where is not None and (where / CHECKPOINT).is_file()
        log(f"training a teacher{f' into {where}' if where else ''}{' (continuing its checkpoint)' * resume}")
        teacher = train_teacher(data, where, seed=seed, device=device, resume=resume, progress=progress, log=log)
    teacher.check_data(data)
    if teacher.train_images is not None and teacher.train_images != len(data.train_x):
        log(
            f"note: the teacher was trained on {teacher.train_images} images and this run distils from "
            f"{len(data.train_x)} (`eval_every` holds some out for validation): where the teacher saw the held-out "
            "images, the validation accuracy of students taught by it is optimistic"
        )
    return teacher


__all__ = ["TEACHER_FILE", "TeacherConfig", "TeacherNet", "load_teacher", "teacher_for", "train_teacher"]
