"""What every teacher-student system shares: its config base, the registry, the run and what it writes.

The systems of ``distilset teach`` distil knowledge from trained models into *labels* (pseudo-labels, soft
labels, consensus scores) rather than into images, and train students on them. Each is one file ending in

    register_system("omni", OmniConfig, run_omni)

where ``run_omni(data, cfg, ctx)`` returns a ``Taught``: the trained models, the labels it produced, a
JSON-able report and a picture. ``teach(name, data, out=...)`` builds the config (checked like a method's),
runs the system and writes, atomically, into ``out``:

- ``models/NAME.safetensors``: each trained network's weights, with the net's name, options, input shape and
  classes in the file's metadata (``load_model`` rebuilds it);
- ``labels.safetensors``: the labels the system produced (which ones: the system's docstring);
- ``report.json``: settings, accuracies and the claim the paper makes with whether this run shows it;
- ``teach.png``: the system's picture (learning curves, the lambda sweep, accuracy by round).

The command line (``distilset teach SYSTEM``) is generated from the same registry and configs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from distilset.config import Config, renamed
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError, SynsetFormatError
from distilset.files import TEACH_LABELS, TEACH_MODELS, TEACH_PICTURE, TEACH_REPORT
from distilset.io import save_tensors, write_bytes, write_json
from distilset.methods.base import Context, SharedOptions, split_options
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.nets.registry import classic_net_for
from distilset.recipes import Standard
from distilset.rundir import prepare_out, releases_locks
from distilset.train import accuracy, fit


@dataclass(frozen=True)
class TeachConfig(Config):
    """Base of the systems' configs: how every network here is trained (one optimiser for all its trainings)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimiser of every training in the run (SGD uses momentum 0.9)."""
    lr: float = 1e-3
    """Learning rate of every training (omni, noisy: lowered x0.1 for the last half of each, as in DC's protocol;
    fedmd: constant, as in its released code)."""
    batch_size: int = 64
    """Minibatch size."""

    def check(self) -> None:
        self.require_positive("lr", "batch_size")

    def recipe(
        self, steps: int, lr: float | None = None, batch_size: int | None = None, schedule: str = "step"
    ) -> Standard:
        """A ``Standard`` recipe of ``steps`` minibatch steps with this config's optimiser, no weight decay."""
        return Standard(
            optimizer=self.optimizer,
            lr=lr or self.lr,
            batch_size=batch_size or self.batch_size,
            steps=steps,
            weight_decay=0.0,
            schedule=schedule,
        )


@dataclass(frozen=True)
class OneNet(NetOption):
    """Mixin of systems whose teacher and student share one architecture."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "Network of the teacher and of every student."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "LeNet on inputs of at least 20x20, else an MLP"}

    def fill_one_net(self, data: Dataset, **more: tuple[Any, str]) -> tuple[Config, dict[str, str]]:
        """``fill_net`` with the net for the input (Dataset Distillation's choice), then the net built once, so a
        net that cannot take these inputs fails before any work."""
        cfg, notes = self.fill_net(data.image_shape, classic_net_for(data.image_shape), **more)
        create_net(cfg.net, data.image_shape, data.num_classes, seed=0, **cfg.net_kwargs)
        return cfg, notes


@dataclass
class Model:
    """A trained network (``module``) and what rebuilds it: net name, options, input shape, classes, and the names
    of its outputs when they are not the dataset's classes in order (FedMD: public, then private classes)."""

    net: str
    kwargs: dict
    in_shape: tuple[int, ...]
    num_classes: int
    module: nn.Module
    outputs: tuple[str, ...] = ()

    @classmethod
    def fresh(
        cls, net: str, kwargs: dict, in_shape: tuple[int, ...], num_classes: int, seed: int, device: str
    ) -> Model:
        module = create_net(net, in_shape, num_classes, seed=seed, **kwargs).to(device)
        return cls(net, dict(kwargs), tuple(in_shape), num_classes, module)

    def metadata(self) -> dict[str, str]:
        meta = {
            "net": self.net,
            "net_kwargs": json.dumps(self.kwargs),
            "in_shape": json.dumps(list(self.in_shape)),
            "num_classes": str(self.num_classes),
        }
        if self.outputs:
            meta["outputs"] = json.dumps(list(self.outputs))
        return meta


def load_model(path: str | Path, device: str = "cpu") -> Model:
    """The model saved by a teach run as ``path`` (``OUT/models/NAME.safetensors``): a ``Model`` whose ``module`` is
    the network, in eval mode, and whose ``outputs`` name its outputs when the file says."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device=device)
        net, kwargs = meta["net"], json.loads(meta["net_kwargs"])
        in_shape, classes = tuple(json.loads(meta["in_shape"])), int(meta["num_classes"])
    except (OSError, KeyError, ValueError) as e:
        raise SynsetFormatError(f"{path} is not a model saved by `distilset teach` ({e})") from e
    model = Model.fresh(net, kwargs, in_shape, classes, seed=0, device=device)
    model.outputs = tuple(json.loads(meta.get("outputs", "[]")))
    model.module.load_state_dict(state)
    model.module.eval()
    return model


@dataclass
class Taught:
    """What a system returns: trained models, produced labels, the report and its picture."""

    models: dict[str, Model]
    labels: dict[str, torch.Tensor]
    report: dict[str, Any]
    picture: Callable[[], Any] | None = None
    """Builds the matplotlib figure of the report (called only when the run writes its outputs)."""


@dataclass(frozen=True)
class System:
    name: str
    config: type[TeachConfig]
    run: Callable[[Dataset, TeachConfig, Context], Taught]
    ray: bool = False
    """Its independent parts can run on Ray (``teach(..., ray=)``, ``--ray``)."""

    @property
    def summary(self) -> str:
        return " ".join((self.config.__doc__ or self.name).strip().split("\n\n")[0].split())


SYSTEMS: dict[str, System] = {}
SHARED = (
    "dataset",
    "data_root",
    "data_path",
    "download",
    "out",
    "seed",
    "device",
    "overwrite",
    "progress",
    "log",
    "ray",
)


def register_system(name: str, config: type[TeachConfig], run: Callable[..., Taught], ray: bool = False) -> System:
    """Register a system: ``run(data, cfg, ctx)`` returns its ``Taught``; ``ray``: it honours ``ctx.ray``."""
    clash = sorted({f.name for f in dataclasses.fields(config)} & set(SHARED))
    if clash:
        raise ValueError(f"{config.__name__} uses option name(s) {clash} that every teach system shares")
    SYSTEMS[name] = System(name, config, run, ray)
    return SYSTEMS[name]


@releases_locks
def teach(
    system: str,
    data: Dataset,
    *,
    log: Callable[[str], None] | None = None,
    ray: bool | str | None = None,
    **options,
) -> Taught:
    """Run teacher-student ``system`` on ``data``; ``options`` are the shared run options (``SharedOptions``:
    ``out``, ``seed``, ``device``, ``overwrite``, ``progress``, ``data_root``, ``download``) and fields of its
    config.

    With ``out`` the models, labels, ``report.json`` and ``teach.png`` are written there (a directory holding
    an earlier run is refused unless ``overwrite``). ``ray`` (FedMD): the parties run on Ray (``distilset.jobs``);
    the results are those of the sequential run for the same seed."""
    if system not in SYSTEMS:
        raise DistilsetError(f"unknown teach system {system!r}; available: {', '.join(sorted(SYSTEMS))}")
    s = SYSTEMS[system]
    opts = split_options(SharedOptions, options)
    options = renamed(s.config, options)  # earlier names of a field, with a warning
    names = [f.name for f in dataclasses.fields(s.config)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for teach {system}: {', '.join(unknown)} ({system} options: {', '.join(names)})"
        )
    if data.token_embedding is not None or len(data.image_shape) != 3:
        raise DistilsetError(f"teach {system} trains image classifiers; {data.info.name} is not an image dataset")
    if ray and not s.ray:
        ray_systems = ", ".join(n for n in sorted(SYSTEMS) if SYSTEMS[n].ray)
        raise ConfigError(f"teach {system} does not run on Ray (systems that do: {ray_systems}); drop `ray`")
    if ray and opts.device.startswith("cuda"):
        raise ConfigError("`ray` runs the parties as CPU actors; run on CUDA without `ray`, or on the CPU")
    cfg, notes = s.config(**options).resolve(data)
    if opts.out is not None:
        opts = dataclasses.replace(opts, out=prepare_out(opts.out, overwrite=opts.overwrite, offers=("overwrite",)))
    ctx = opts.context(log, ray)
    ctx.log(f"teach {system} on {data.info.name}, seed {opts.seed}:")
    for line in cfg.settings_lines(notes):
        ctx.log(line)
    start = time.perf_counter()
    taught = s.run(data.to(opts.device), cfg, ctx)
    taught.report = {
        "system": system,
        "dataset": data.info.name,
        "seed": opts.seed,
        "config": cfg.to_json(),
        "resolved": notes,
        **taught.report,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {opts.device}",
    }
    if opts.out is not None:
        write_outputs(Path(opts.out), taught)
    return taught


def write_outputs(out: Path, taught: Taught) -> None:
    for name, model in taught.models.items():
        state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
        save_tensors(out / TEACH_MODELS / f"{name}.safetensors", state, metadata=model.metadata())
    if taught.labels:
        save_tensors(out / TEACH_LABELS, {k: v.detach().cpu().contiguous() for k, v in taught.labels.items()})
    write_json(out / TEACH_REPORT, taught.report)
    if taught.picture is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = taught.picture()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        write_bytes(out / TEACH_PICTURE, buf.getvalue())


# ---- pieces the systems share ---------------------------------------------------------------------------
def train(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Standard,
    seed: int,
    test: Dataset | None = None,
    points: int = 12,
    **fit_kw,
) -> list[tuple[int, float]]:
    """``fit`` the model; with ``test``, its test accuracy at about ``points`` epochs along the way:
    ``[(step, accuracy), ...]``, the learning curve."""
    curve: list[tuple[int, float]] = []
    on_epoch = None
    if test is not None:
        per_epoch = fit_kw["batches"].per_epoch if "batches" in fit_kw else -(-len(x) // min(recipe.batch_size, len(x)))
        epochs = max(1, recipe.steps // per_epoch)
        every = max(1, epochs // points)

        def on_epoch(e: int, net: nn.Module) -> None:
            if e % every == 0:
                curve.append((e * per_epoch, accuracy(net, test.test_x, test.test_y)))

    fit(model.module, x, y, recipe, seed=seed, on_epoch=on_epoch, **fit_kw)
    if test is not None:
        curve.append((recipe.steps, accuracy(model.module, test.test_x, test.test_y)))
    return curve


@torch.no_grad()
def predict(model: Model, x: torch.Tensor, batch_size: int = 1024, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities softmax(f(x) / temperature), in eval mode."""
    net = model.module
    was = net.training
    net.eval()
    out = torch.cat([torch.softmax(net(x[i : i + batch_size]) / temperature, 1) for i in range(0, len(x), batch_size)])
    net.train(was)
    return out


def test_accuracy(model: Model, data: Dataset) -> float:
    return accuracy(model.module, data.test_x, data.test_y)


def check_share(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"`{name}` must be a share between 0 and 1 (exclusive), got {value}")


def split_per_class(
    data: Dataset, share: float | int, generator: torch.Generator, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(picked, rest): ``Dataset.holdout``, the one class-balanced split of training indices."""
    return data.holdout(share, generator, what)


def claim(text: str, holds: bool, evidence: Mapping[str, float]) -> dict[str, Any]:
    """The report's entry for one claim of the paper: what it says, whether this run shows it, the numbers."""
    numbers = {k: v if isinstance(v, int) else round(float(v), 4) for k, v in evidence.items()}
    return {"claim": text, "holds": bool(holds), **numbers}
