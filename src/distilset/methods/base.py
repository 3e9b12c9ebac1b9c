"""What every distillation method is made of: its config base, the option mixins, the context it is built in
and the distiller base class.

A method is a config class (``MethodConfig``: options, checks, dataset-aware defaults) and a stepwise distiller
(``Distiller``): ``step(iteration) -> metrics``, ``state_dict()``, ``load_state_dict()`` and ``synthetic_set()``.
A subclass writes ``outer_step``, one outer iteration; ``step`` around it owns what every method needs on a
non-finite value (the subclass calls ``check_finite`` before it changes any state): the random generator is put
back where the iteration found it, so the state saved at the stop replays the same iteration on resume.
``distilset.methods.runner`` drives a distiller: progress, history, checkpoints, resume, signals.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from distilset.config import REQUIRED_FLAG, Config, auto, check_seed, field_specs
from distilset.distributed import current
from distilset.errors import ConfigError, DistilsetError
from distilset.nets import create_net
from distilset.synset import SyntheticSet
from distilset.teachers import TeacherNet, teacher_for, teacher_path


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
        """Before 0.3: ``NetOption.fill_net(data.image_shape, ("convnet", why), **more)``, which it calls."""
        return self.fill_net(data.image_shape, ("convnet", why), **more)


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


@dataclass(frozen=True)
class SharedOptions(Config):
    """Options every run shares, ``distill METHOD`` and ``teach SYSTEM`` alike."""

    out: Path | None = field(default=None, metadata={REQUIRED_FLAG: True})
    """Output directory (none: nothing is written; the command line needs one)."""
    seed: int = 0
    """Random seed."""
    device: str = "cpu"
    """cpu or cuda."""
    overwrite: bool = False
    """Replace the run already in `out` (a directory holding another run is refused without this)."""
    progress: bool = False
    """Print progress (a bar on a terminal, log lines elsewhere)."""
    data_root: Path | None = None
    """Directory of raw dataset files, for outputs that read them (a text set's nearest snippets)."""
    download: bool = False
    """Download missing files those outputs need (checksum-verified)."""

    def __post_init__(self) -> None:
        if isinstance(self.device, torch.device):  # as PyTorch names it
            object.__setattr__(self, "device", str(self.device))
        super().__post_init__()

    def check(self) -> None:
        check_seed(self.seed)
        kind, _, index = self.device.partition(":")
        if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
            raise ConfigError(f"`device` {self.device} is not a device; use cpu, cuda or cuda:N")

    def context(self, log: Callable[[str], None] | None, ray: bool | str | None, **more: Any) -> Context:
        """The ``Context`` a method or system runs in."""
        return Context(
            seed=self.seed,
            device=self.device,
            out=self.out,
            progress=self.progress,
            log=log or (lambda message: None),
            data_root=str(self.data_root) if self.data_root is not None else None,
            download=self.download,
            ray=ray,
            **more,
        )


@dataclass(frozen=True)
class RunOptions(SharedOptions):
    """Options every ``distill METHOD`` shares: how long it runs and where it keeps its work."""

    preset: str | None = None
    """Named settings of the papers: a dataset, a budget and options (the options given override them)."""
    iterations: int | None = None
    """Outer iterations (default: the preset's, else the method's budget)."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint."""
    checkpoint_every: int = 50
    """Iterations between checkpoints."""
    eval_every: int = 0
    """Record accuracy every N iterations on held-out training images, never the test split (0: never)."""

    def check(self) -> None:
        super().check()
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"`iterations` must be >= 1, got {self.iterations}")
        if self.checkpoint_every < 1:
            raise ConfigError(
                f"`checkpoint_every` must be >= 1 (iterations between checkpoints), got {self.checkpoint_every}"
            )
        if self.eval_every < 0:
            raise ConfigError(f"`eval_every` must be >= 0 (0: no accuracy during the run), got {self.eval_every}")
        if self.resume and self.out is None:
            raise ConfigError("`resume` needs `out`, the directory of the interrupted run")


def split_options(cls: type[Config], options: dict[str, Any]) -> Any:
    """An instance of ``cls`` from the fields of ``cls`` taken out of ``options`` (the rest stay there: the method's
    or system's own)."""
    return cls(**{s.name: options.pop(s.name) for s in field_specs(cls) if s.name in options})


class Distiller:
    """Base of the stepwise distillers. The constructor takes the dataset, the config (the runner hands over the one
    it resolved; one made by hand is resolved here) and the context, and keeps them with a random generator seeded
    by the run's seed and the data-parallel shards. A subclass writes ``outer_step``, ``state_dict``,
    ``load_state_dict`` and ``synthetic_set``."""

    def __init__(self, data: Any, cfg: MethodConfig, ctx: Context | None = None) -> None:
        if not cfg.resolved:  # built by hand (the runner hands over the config it resolved)
            cfg, _ = cfg.resolve(data)
        self.data, self.cfg, self.ctx = data, cfg, ctx or Context()
        self.seed, self.device = self.ctx.seed, self.ctx.device
        self.generator = torch.Generator().manual_seed(self.seed)
        self.shards = current()

    def step(self, iteration: int) -> dict[str, float]:
        """One outer iteration; on a non-finite value (``NonFiniteError``) the generator is rewound first."""
        return rewind_on_nonfinite(self.generator, lambda: self.outer_step(iteration))

    def draw(self, n: int) -> int:
        """A random integer in [0, n) from the run's generator (a net's seed, a pool member, ...)."""
        return int(torch.randint(n, (1,), generator=self.generator))

    @contextmanager
    def kept_finite(
        self, optimizer: torch.optim.Optimizer, learned: list[torch.Tensor], what: str, derived=None
    ) -> Iterator[None]:
        """Around an update of ``learned`` by ``optimizer``: if a learned tensor (or ``derived()``, e.g. the lrs a
        raw parameter gives) turns NaN/inf, put them and the optimizer's state back and raise ``NonFiniteError``."""
        kept = [t.detach().clone() for t in learned], copy.deepcopy(optimizer.state_dict())
        yield
        tensors = [*learned, *([derived()] if derived is not None else [])]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            with torch.no_grad():
                for t, old in zip(learned, kept[0], strict=True):
                    t.copy_(old)
            optimizer.load_state_dict(kept[1])
            raise NonFiniteError(f"{what} became NaN/inf")

    def descend(
        self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, reported: torch.Tensor | None = None
    ) -> float:
        """One step of ``optimizer`` down ``loss``: the gradients summed over the data-parallel ranks, then refused
        before any change when the loss (``reported``, else ``loss``, summed over the ranks) or a gradient is not
        finite (``what`` names it). Returns that loss."""
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        learned = [p for group in optimizer.param_groups for p in group["params"]]
        self.shards.sum_grads(learned)
        total = float(self.shards.sum_((loss if reported is None else reported).detach().clone()))
        check_finite(what, total, *(p.grad for p in learned))
        optimizer.step()
        return total

    def outer_step(self, iteration: int) -> dict[str, float]:
        raise NotImplementedError

    def quick_eval(self, validation: Any) -> dict[str, float]:
        """``eval_every``: the accuracy of the current set, trained once by its recipe, on ``validation``'s
        held-out training images (its test split)."""
        from distilset.evaluate import evaluate

        res = evaluate(self.synthetic_set(), validation, repeats=1, seed=777, device=self.device)
        return {"val_acc": res.accuracy_mean}

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def synthetic_set(self) -> SyntheticSet:
        raise NotImplementedError


def check_finite(what: str, loss: float | torch.Tensor, *tensors: torch.Tensor | None) -> None:
    """Raise ``NonFiniteError`` ("``what`` is not finite (loss ...)") if ``loss`` or any of ``tensors`` (gradients,
    learned values) holds NaN or inf: a method calls it before it changes any state."""
    loss = float(loss)
    if not math.isfinite(loss) or not all(t is None or bool(torch.isfinite(t).all()) for t in tensors):
        raise NonFiniteError(f"{what} is not finite (loss {loss:.4g})")


def start_labels(kind: str, hard: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Learned labels' start, one row per item of class ``hard``: ``onehot`` (its class), ``uniform`` (1/k each) or
    ``random`` (a softmax of Gaussian noise, drawn from ``generator``)."""
    if kind == "onehot":
        return torch.nn.functional.one_hot(hard, k).float()
    if kind == "uniform":
        return torch.full((len(hard), k), 1.0 / k, device=hard.device)
    return torch.softmax(torch.randn(len(hard), k, generator=generator), 1).to(hard.device)


_MOVED = {
    "run": "distilset.methods.runner",
    "RunConfig": "distilset.methods.runner",
    "Identity": "distilset.methods.runner",
    "dataset_identity": "distilset.methods.runner",
    "save_checkpoint": "distilset.methods.runner",
    "load_checkpoint": "distilset.methods.runner",
    "CHECKPOINT": "distilset.files",
}


def __getattr__(name: str) -> Any:
    """Names that moved to ``distilset.methods.runner`` (0.3), still importable from here for one release."""
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(f"import {name} from {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
