"""FedMD: heterogeneous federated learning via model distillation (Li & Wang, NeurIPS 2019 workshop).

Read beside the paper's algorithm 1 and its released code's EMNIST configuration:

- **Parties**: one network each, of different architectures (``nets``: ``NAME`` or ``NAME:key=value,...``,
  e.g. ``convnet:width=16``), all with one output layer covering the public classes and, after them, the
  private ones (the paper: MNIST digits 0-9, then EMNIST letters relabelled 10-15).
- **Data**: the private task is the first ``private_classes`` classes of ``--dataset`` (default Fashion-MNIST);
  the public set is ``public``, by default the same dataset's other classes (relabelled from 0): one domain
  with disjoint classes, as the paper's MNIST digits (public) and EMNIST letters (private). Another dataset of
  the same input shape may be named (e.g. ``mnist5k``, 5000 MNIST digits, for Fashion-MNIST: another domain).
  Each party holds ``per_class``
  private images of each class (``split`` balanced, the paper's balanced setting), or a Dirichlet(0.5) share
  of the same total (``split`` skewed: classes given to parties non-uniformly, some missing).
- **Transfer learning**: every party trains on the public set (``public_epochs``), then on its private images
  (``private_epochs``, minibatch 5). Its private-task accuracy now is the *transfer-only* baseline.
- **Rounds** (``rounds``): the server draws a fresh public subset (``public_subset`` images); every party sends
  its class scores (pre-softmax, all outputs) on it; the server averages them into the consensus; every party
  **digests** it (mean absolute error to the consensus, 1 epoch, minibatch 256) and **revisits** its private
  images (``revisit_epochs``, minibatch 5). Accuracy is measured after every round.
- **Upper bound**: each architecture trained after the same public training on the private images of all
  parties pooled.

Private-task accuracy is measured on the test images of the private classes, the prediction taken over the
private outputs only (the public outputs stay in the network for the consensus). All trainings use the
config's optimiser (the paper: Adam 1e-3) at a constant lr. The party/server exchange goes through the
``Party`` methods ``scores``, ``digest``, ``revisit`` and ``accuracy`` only. With ``ray`` (``--ray``) every
party's setup (public and private training, the pooled bound) is a Ray task, and in the rounds the parties live
on Ray actors (one per CPU of the cluster, each holding its share of the parties), scoring, digesting and
revisiting side by side; the results equal the sequential run's.

Deviation, named: every digest and revisit starts a fresh Adam (the released Keras code keeps each model's
optimiser state across rounds).

Outputs: ``models/party-I-NAME`` after the last round; ``labels.safetensors``: the last round's public indices
(``public_index``: rows of the public training set, which for the default public set is the dataset's training
images of the classes outside the private task, in their order) and ``consensus`` scores, and every party's
private indices (``party_I_index``);
``teach.png``: each party's private accuracy by round, with the transfer-only and pooled means.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from distilset.config import auto
from distilset.data import load_dataset
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.jobs import Crowd, run_jobs
from distilset.methods.base import Context
from distilset.nets import NETS, create_net
from distilset.teach.base import Model, Taught, TeachConfig, claim, register_system, train

DEFAULT_NETS = (
    "mlp",
    "mlp:width=256,depth=1",
    "mlp:width=64,depth=3",
    "lenet",
    "convnet:width=8",
    "convnet:width=16",
    "convnet-bn:width=8",
    "convnet-bn:width=16",
    "convnet:width=16,depth=2",
    "convnet-bn:width=16,depth=2",
)
SMALL_NETS = (
    "mlp",
    "mlp:width=256,depth=1",
    "mlp:width=64,depth=3",
    "mlp:width=32,depth=2",
    "convnet:width=8,depth=2",
    "convnet:width=16,depth=2",
    "convnet-bn:width=8,depth=2",
    "convnet-bn:width=16,depth=2",
    "convnet:width=16,depth=1",
    "convnet-bn:width=16,depth=1",
)
"""The parties' networks for inputs under 20x20 (8x8 digits): no LeNet, ConvNets of depth 1-2."""


@dataclass(frozen=True)
class FedMDConfig(TeachConfig):
    """FedMD (Li & Wang 2019): parties with different networks share knowledge by agreeing on class scores on
    public data (consensus, digest, revisit), then train on their few private images."""

    public: str | None = auto("the dataset's classes outside the private task")
    """Public dataset every party pre-trains on and scores in each round (same input shape as the private one);
    the private dataset's own name means its classes outside the private task."""
    nets: tuple[str, ...] | None = auto("10 different nets (MLPs, LeNet on 28x28, ConvNets of widths 8-16)")
    """One network per party: NAME or NAME:key=value,... (at least 2 parties)."""
    private_classes: int = 6
    """The private task: the first this many classes of the dataset (the paper: 6 letters)."""
    per_class: int = 3
    """Private images of each class per party (balanced split; the skewed split deals out the same total)."""
    split: Literal["balanced", "skewed"] = "balanced"
    """Private images per party: the same count of every class, or Dirichlet(0.5) class shares."""
    public_epochs: int = 5
    """Epochs of every party on the public set before its private training."""
    private_epochs: int = 25
    """Epochs of the transfer-learning step on the private images (minibatch 5)."""
    rounds: int = 20
    """Collaboration rounds."""
    public_subset: int = 2000
    """Public images drawn afresh in every round for the consensus (at most the public training set)."""
    revisit_epochs: int = 2
    """Epochs on the private images after each digest (minibatch 5)."""
    control: bool = True
    """Also run the rounds without the consensus (revisits only): how much of the gain is just more private
    training."""

    def check(self) -> None:
        super().check()
        self.require_positive(
            "private_classes", "per_class", "public_epochs", "private_epochs", "public_subset", "revisit_epochs"
        )
        self.require_at_least(0, "rounds")
        if self.nets is not None and len(self.nets) < 2:
            raise ConfigError(f"`nets` needs at least 2 parties, got {list(self.nets)}")
        for spec in self.nets or ():
            parse_net(spec)

    def resolve(self, data: Dataset) -> tuple[FedMDConfig, dict[str, str]]:
        if self.private_classes > data.num_classes:
            raise ConfigError(
                f"`private_classes` {self.private_classes} exceeds the {data.num_classes} classes of {data.info.name}"
            )
        side = min(data.image_shape[1:])
        k = self.private_classes
        if self.public in (None, data.info.name) and k >= data.num_classes:
            raise ConfigError(
                f"the public set is {data.info.name}'s classes outside the private task: lower "
                f"`private_classes` below {data.num_classes}, or name another `public`"
            )
        nets = (DEFAULT_NETS, f"{side}-pixel inputs") if side >= 20 else (SMALL_NETS, f"{side}-pixel inputs: no LeNet")
        return self.fill(
            public=(
                data.info.name,
                f"{data.info.name}'s classes {k}-{data.num_classes - 1}: one domain, classes "
                "disjoint from the private task's (the paper: MNIST digits, EMNIST letters)",
            ),
            nets=nets,
        )


def parse_net(spec: str) -> tuple[str, dict]:
    """``convnet:width=16,depth=2`` -> ("convnet", {"width": 16, "depth": 2})."""
    name, _, opts = spec.partition(":")
    if name not in NETS:
        raise ConfigError(f"`nets`: unknown net {name!r} in {spec!r}; known: {', '.join(sorted(NETS))}")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"`nets`: {spec!r} needs NAME:key=value,...; {item!r} has no '='")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


class Party:
    """One participant: its network, its private images and how it trains. ``collaborate`` only calls
    ``scores``, ``digest``, ``revisit`` and ``accuracy``, whose arguments and results are plain tensors and
    numbers, so a party can live in another process (a Ray actor, ``distilset.jobs.Crowd``)."""

    def __init__(self, index: int, model: Model, x: torch.Tensor, y: torch.Tensor, cfg: FedMDConfig, seed: int) -> None:
        self.index, self.model, self.x, self.y, self.cfg, self.seed = index, model, x, y, cfg, seed

    @property
    def name(self) -> str:
        return f"party-{self.index}-{self.model.net}"

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        net = self.model.module
        net.eval()
        with torch.no_grad():
            out = torch.cat([net(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        net.train()
        return out

    def digest(self, x: torch.Tensor, consensus: torch.Tensor, seed: int) -> None:
        """One epoch of mean absolute error to the consensus scores, minibatch 256."""
        steps = -(-len(x) // 256)
        train(
            self.model,
            x,
            consensus,
            self.cfg.recipe(steps, batch_size=256, schedule="constant"),
            seed=seed,
            loss_fn=F.l1_loss,
        )

    def revisit(self, epochs: int, seed: int) -> None:
        """``epochs`` on the private images, minibatch 5."""
        steps = epochs * -(-len(self.x) // min(5, len(self.x)))
        train(self.model, self.x, self.y, self.cfg.recipe(steps, batch_size=5, schedule="constant"), seed=seed)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, offset: int) -> float:
        return private_accuracy(self.model, x, y, offset)


def collaborate(
    parties: Sequence[Party] | Crowd, public_x: torch.Tensor, cfg: FedMDConfig, seed: int, after_round=None
) -> torch.Tensor:
    """The server: ``cfg.rounds`` of fresh public subset, consensus, digest, revisit, each party's training seeded
    by its ``index``. ``parties``: a list (called one after another here) or a ``Crowd`` (e.g. on Ray actors, side
    by side). Returns the last consensus (and calls ``after_round(r, subset_index, consensus)``)."""
    crowd = parties if isinstance(parties, Crowd) else Crowd(parties)
    index = crowd.get("index")
    g = torch.Generator().manual_seed(seed)
    consensus = torch.empty(0)
    for r in range(1, cfg.rounds + 1):
        pick = torch.randperm(len(public_x), generator=g)[: cfg.public_subset].to(public_x.device)
        subset = public_x[pick]
        consensus = torch.stack(crowd.each("scores", subset)).mean(0)
        crowd.map("digest", [(subset, consensus, seed + 1000 * r + i) for i in index])
        crowd.map("revisit", [(cfg.revisit_epochs, seed + 1000 * r + 500 + i) for i in index])
        if after_round is not None:
            after_round(r, pick, consensus)
    return consensus


def private_accuracy(model: Model, x: torch.Tensor, y: torch.Tensor, offset: int) -> float:
    """Accuracy on private test images (labels offset..), predicted over the private outputs only."""
    net = model.module
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 1024])[:, offset:].argmax(1) for i in range(0, len(x), 1024)]) + offset
    net.train()
    return float((pred == y).float().mean())


def deal(y: torch.Tensor, parties: int, cfg: FedMDConfig, g: torch.Generator) -> list[torch.Tensor]:
    """Private training indices of each party (disjoint): per_class of each class, or Dirichlet class shares."""
    pools = [torch.nonzero(y == c, as_tuple=True)[0].cpu() for c in range(cfg.private_classes)]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    total = cfg.per_class * cfg.private_classes
    taken = [0] * cfg.private_classes
    out = []
    for _ in range(parties):
        if cfg.split == "balanced":
            counts = [cfg.per_class] * cfg.private_classes
        else:
            shares = torch.distributions.Dirichlet(torch.full((cfg.private_classes,), 0.5)).sample()
            counts = torch.distributions.Multinomial(total, shares).sample().long().tolist()
        picks = []
        for c, n in enumerate(counts):
            if taken[c] + n > len(pools[c]):
                raise DistilsetError(f"class {c} has too few images for {parties} parties x {n}; lower `per_class`")
            picks.append(pools[c][taken[c] : taken[c] + n])
            taken[c] += n
        out.append(torch.cat(picks))
    return out


def public_set(data: Dataset, cfg: FedMDConfig, ctx: Context) -> Dataset:
    """The public dataset; when it names the private one, its classes outside the private task (relabelled 0..),
    the way MNIST digits and EMNIST letters are one domain with disjoint classes in the paper."""
    if cfg.public != data.info.name:
        return load_dataset(cfg.public, root=ctx.data_root, download=ctx.download)
    k = cfg.private_classes
    train, test = data.train_y >= k, data.test_y >= k
    info = dataclasses.replace(data.info, name=f"{data.info.name}[{k}:]", class_names=data.info.class_names[k:])
    return Dataset(info, data.train_x[train], data.train_y[train] - k, data.test_x[test], data.test_y[test] - k)


@dataclass
class _Setting:
    """What setting up any party needs (sent once to every setup job)."""

    data: Dataset
    public: Dataset
    cfg: FedMDConfig
    seed: int
    device: str
    pooled_idx: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    progress: bool = False

    @property
    def offset(self) -> int:
        return self.public.num_classes


def _set_up_party(s: _Setting, i: int, spec: str, idx: torch.Tensor) -> tuple[Party, float, float]:
    """Party i's transfer learning (public, then its private images ``idx``), and beside it the pooled bound (the
    same public training, then the private images of all parties); returns the party and the two accuracies."""
    cfg, data, public, offset = s.cfg, s.data, s.public, s.offset
    name, kwargs = parse_net(spec)
    model = Model.fresh(name, kwargs, data.image_shape, offset + cfg.private_classes, seed=s.seed + i, device=s.device)
    model.outputs = (*public.info.class_names, *data.info.class_names[: cfg.private_classes])
    steps = cfg.public_epochs * -(-len(public.train_x) // cfg.batch_size)
    train(
        model,
        public.train_x,
        public.train_y,
        cfg.recipe(steps, schedule="constant"),
        seed=s.seed + i,
        progress=s.progress,
        desc=f"fedmd: party {i} on the public set",
    )
    public_acc = private_accuracy(model, public.test_x, public.test_y, 0) if offset else 0.0

    def private_fit(m: Model, rows: torch.Tensor, seed: int) -> None:
        steps = cfg.private_epochs * -(-len(rows) // min(5, len(rows)))
        train(
            m,
            data.train_x[rows],
            data.train_y[rows] + offset,
            cfg.recipe(steps, batch_size=5, schedule="constant"),
            seed=seed,
        )

    twin = Model.fresh(model.net, model.kwargs, model.in_shape, model.num_classes, seed=0, device=s.device)
    twin.module.load_state_dict(model.module.state_dict())
    private_fit(model, idx, seed=s.seed + 100 + i)
    private_fit(twin, s.pooled_idx, seed=s.seed + 200 + i)
    party = Party(i, model, data.train_x[idx], data.train_y[idx] + offset, cfg, s.seed + i)
    return party, public_acc, private_accuracy(twin, s.test_x, s.test_y, offset)


def run_fedmd(data: Dataset, cfg: FedMDConfig, ctx: Context) -> Taught:
    """FedMD's run: parties set up (Ray tasks with ``ctx.ray``), rounds (the parties as Ray actors with
    ``ctx.ray``), the revisits-only control, the report."""
    for spec in cfg.nets:  # every party's net and its options checked before any party trains
        name, kwargs = parse_net(spec)
        create_net(name, data.image_shape, data.num_classes, seed=0, **kwargs)
    public = public_set(data, cfg, ctx).to(ctx.device)
    if public.image_shape != data.image_shape:
        raise ConfigError(
            f"`public` {cfg.public} has inputs {public.image_shape} but {data.info.name} has "
            f"{data.image_shape}; pick a public set of the same shape"
        )
    offset = public.num_classes
    g = torch.Generator().manual_seed(ctx.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)  # the Dirichlet draws of the skewed split
        dealt = [i.to(data.train_x.device) for i in deal(data.train_y, len(cfg.nets), cfg, g)]
    test_mask = data.test_y < cfg.private_classes
    test_x, test_y = data.test_x[test_mask], data.test_y[test_mask] + offset
    setting = _Setting(
        data, public, cfg, ctx.seed, ctx.device, torch.cat(dealt), test_x, test_y, progress=ctx.progress and not ctx.ray
    )
    set_up = run_jobs(_set_up_party, [(setting, i, spec, dealt[i]) for i, spec in enumerate(cfg.nets)], ray=ctx.ray)
    parties = [p for p, _, _ in set_up]
    public_acc, pooled = [a for _, a, _ in set_up], [b for _, _, b in set_up]
    for p, acc in zip(parties, public_acc, strict=True):
        ctx.log(f"  {p.name}: public test {100 * acc:.1f} %, private {len(p.x)} images")
    by_round = [[p.accuracy(test_x, test_y, offset) for p in parties]]
    ctx.log(
        f"  transfer only: {100 * sum(by_round[0]) / len(parties):.2f} % mean private accuracy; pooled bound "
        f"{100 * sum(pooled) / len(parties):.2f} %"
    )
    last: dict[str, torch.Tensor] = {}
    alone = [copy.deepcopy(p) for p in parties] if cfg.control else None
    crowd = Crowd(parties, ray=ctx.ray)

    def after_round(r: int, pick: torch.Tensor, consensus: torch.Tensor) -> None:
        by_round.append(crowd.each("accuracy", test_x, test_y, offset))
        last.update(public_index=pick, consensus=consensus)
        ctx.log(f"  round {r}: {100 * sum(by_round[-1]) / len(parties):.2f} % mean private accuracy")

    collaborate(crowd, public.train_x, cfg, seed=ctx.seed, after_round=after_round)
    parties = crowd.members()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    control = None
    if alone is not None:  # the same revisits, no consensus
        alone = Crowd(alone, ray=ctx.ray)
        for r in range(1, cfg.rounds + 1):
            alone.map("revisit", [(cfg.revisit_epochs, ctx.seed + 1000 * r + 500 + i) for i in range(len(alone))])
        control = alone.each("accuracy", test_x, test_y, offset)
        ctx.log(f"  control, revisits without consensus: {100 * mean(control):.2f} % mean private accuracy")
    report: dict[str, Any] = {
        "parties": [p.name for p in parties],
        "private_images": [len(i) for i in dealt],
        "public_test_accuracy": public_acc,
        "transfer_only": by_round[0],
        "final": by_round[-1],
        "pooled": pooled,
        "by_round": by_round,
        "mean_transfer_only": mean(by_round[0]),
        "mean_final": mean(by_round[-1]),
        "mean_pooled": mean(pooled),
        "revisit_only": control,
        "mean_revisit_only": mean(control) if control else None,
    }
    gain = report["mean_final"] - report["mean_transfer_only"]
    gaining = int(sum(f > t for f, t in zip(by_round[-1], by_round[0], strict=True)))
    report["claims"] = [
        claim(
            "collaboration gains over transfer-only training", gain > 0, {"mean_gain": gain, "parties_gaining": gaining}
        ),
        claim(
            "and ends below the pooled-private bound",
            report["mean_final"] < report["mean_pooled"],
            {"mean_final": report["mean_final"], "mean_pooled": report["mean_pooled"]},
        ),
    ]
    if control:
        report["claims"].append(
            claim(
                "the consensus adds to what the same extra private epochs give without it",
                report["mean_final"] > mean(control),
                {"mean_final": report["mean_final"], "mean_revisit_only": mean(control)},
            )
        )
    labels = {**last, **{f"party_{i}_index": idx for i, idx in enumerate(dealt)}}
    models = {p.name: p.model for p in parties}
    return Taught(models, labels, report, picture=lambda: _picture(report, cfg, data.info.name))


def _picture(report: dict, cfg: FedMDConfig, dataset: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = list(range(len(report["by_round"])))
    for i in range(len(report["parties"])):
        ax.plot(
            rounds,
            [100 * r[i] for r in report["by_round"]],
            color="grey",
            linewidth=0.7,
            label="each party" if i == 0 else None,
        )
    ax.plot(rounds, [100 * sum(r) / len(r) for r in report["by_round"]], color="black", linewidth=2, label="mean")
    ax.axhline(100 * report["mean_transfer_only"], color="black", linestyle=":", label="transfer only (mean)")
    ax.axhline(100 * report["mean_pooled"], color="black", linestyle="--", label="pooled private (mean)")
    if report["mean_revisit_only"] is not None:
        ax.axhline(100 * report["mean_revisit_only"], color="grey", linestyle="-.", label="revisits only (mean)")
    ax.set(
        xlabel="round",
        ylabel="private test accuracy (%)",
        title=f"FedMD: public {cfg.public}, private {dataset} ({cfg.private_classes} classes, {cfg.split})",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


register_system("fedmd", FedMDConfig, run_fedmd, ray=True)
__all__ = ["FedMDConfig", "Party", "collaborate", "run_fedmd"]
