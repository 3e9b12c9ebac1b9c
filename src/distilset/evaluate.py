"""The evaluation harness: train fresh networks on a SyntheticSet, report final test accuracy.

Protocols (written into every result):
- ``standard`` (DC / DSA / MTT): SGD momentum 0.9, weight decay 5e-4, lr 0.01 (or the set's learned
  ``train_lr``), batch 256, E epochs (300; 1000 with DSA), lr x0.1 at half; optional DSA augmentation
  with one parameter set per image. Order-agnostic: it sees the images, not any recipe.
- ``recipe`` (Dataset Distillation): replay the set's step order with its learned per-step lrs (plain SGD,
  no momentum) from its own init regime: the stored init for fixed-init sets, fresh inits otherwise.

Accuracy is the *final* test accuracy, mean and population std (as DC's ``np.std``) over ``repeats``
networks, seeds ``seed, seed + 1, ...``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from distilset.augment import dsa, toroidal_crop
from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.nets import create_net
from distilset.synset import SyntheticSet

PROTOCOLS = ("standard", "recipe")


@dataclass(frozen=True)
class StandardProtocol:
    """DC's training recipe for a fresh network on a small set."""

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay_at_half: bool = True
    dsa_strategy: str | None = None  # None: no augmentation
    optimizer: str = "sgd"  # or "adam" (Adam with the same lr schedule and weight decay, no momentum term)
    crop: tuple[int, int] | None = None  # texture sets: train on random toroidal crops of this size


@dataclass
class EvalResult:
    """Accuracies of fresh nets trained on a set, with everything needed to reproduce them."""

    protocol: str
    net: str
    net_kwargs: dict
    dataset: str
    epochs: int | None
    repeats: int
    seeds: list[int]
    runs: list[float]
    accuracy_mean: float
    accuracy_std: float
    wall_time_s: float
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        epochs = f", {self.epochs} epochs" if self.epochs is not None else ""
        return (
            f"{100 * self.accuracy_mean:.2f} ± {100 * self.accuracy_std:.2f} % test accuracy "
            f"({self.repeats} nets, protocol {self.protocol}, {self.net}{epochs}, {self.wall_time_s:.1f} s)"
        )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard (N,) or soft (N, K) targets: mean_i sum_y t_iy * -log p_iy."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    net.train(was_training)
    return correct / max(len(x), 1)


def train_standard(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    protocol: StandardProtocol,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``net`` in place on (x, y) with the standard protocol; y hard (N,) or soft (N, K)."""
    g = torch.Generator().manual_seed(seed)
    if protocol.optimizer == "sgd":
        opt = torch.optim.SGD(
            net.parameters(), protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
        )
    elif protocol.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), protocol.lr, weight_decay=protocol.weight_decay)
    else:
        raise DistilsetError(f"unknown optimizer {protocol.optimizer!r}; choose sgd or adam")
    net.train()
    n = len(x)
    for epoch in tqdm(range(protocol.epochs), desc="train", leave=False, disable=not progress):
        if protocol.decay_at_half and epoch == protocol.epochs // 2 and epoch > 0:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        perm = torch.randperm(n, generator=g).to(x.device)
        for i in range(0, n, protocol.batch_size):
            idx = perm[i : i + protocol.batch_size]
            xb = x[idx]
            if protocol.crop:
                xb = toroidal_crop(xb, protocol.crop, seed=int(torch.randint(2**62, (1,), generator=g)))
            if protocol.dsa_strategy:
                aug_seed = int(torch.randint(2**62, (1,), generator=g))
                xb = dsa(xb, protocol.dsa_strategy, seed=aug_seed, siamese=False)
            loss = soft_cross_entropy(net(xb), y[idx])
            if not torch.isfinite(loss) and y.ndim == 2 and bool((y < 0).any()):
                raise DistilsetError(
                    f"evaluation training diverged at epoch {epoch}: the soft labels hold negative entries "
                    f"(min {float(y.min()):.3g}), so cross-entropy on them is unbounded below; evaluate this set "
                    "with its recipe (--protocol recipe) or clip its labels"
                )
            if not torch.isfinite(loss):
                raise DistilsetError(
                    f"evaluation training diverged (loss {loss.item()}) at epoch {epoch}; lower the lr "
                    f"(now {opt.param_groups[0]['lr']:g})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net


def train_recipe(net: nn.Module, syn: SyntheticSet) -> nn.Module:
    """Replay the set's step order with its learned lrs: plain SGD steps, as Dataset Distillation trains."""
    if syn.lrs is None or syn.step_order is None:
        raise DistilsetError(
            "protocol 'recipe' needs a set with learned lrs and a step order "
            "(Dataset Distillation sets); use --protocol standard for this set"
        )
    params = [p for p in net.parameters() if p.requires_grad]
    device = params[0].device
    images, labels = syn.images.to(device), syn.labels.to(device)
    net.train()
    for t in range(len(syn.lrs)):
        idx = syn.step_order[t].to(device)
        loss = soft_cross_entropy(net(images[idx]), labels[idx])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads, strict=True):
                p.sub_(syn.lrs[t].to(device) * gr)
    return net


def _load_init(model: nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    """Load stored initial parameters (buffers may be absent: they keep the fresh net's values)."""
    device = next(model.parameters()).device
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in theta0.items()}, strict=False)
    params = dict(model.named_parameters())
    if unexpected or any(k in params for k in missing):
        raise DistilsetError(f"stored init does not fit net: missing {missing}, unexpected {unexpected}")


def align_test_data(syn: SyntheticSet, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the test split into the set's preprocessing (normalisation, ZCA) so accuracy is honest."""
    crop = texture_crop(syn)
    shape = (syn.image_shape[0], *crop) if crop else syn.image_shape
    if syn.images.ndim == 4 and tuple(data.test_x.shape[1:]) != shape:
        raise DistilsetError(
            f"set images are {syn.image_shape} but {data.info.name} has {tuple(data.test_x.shape[1:])};"
            " evaluate on the dataset the set was made from"
        )
    if data.num_classes != syn.num_classes:
        raise DistilsetError(f"set has {syn.num_classes} classes, {data.info.name} has {data.num_classes}")
    x = data.test_x
    if data.zca is not None:
        if syn.zca is None:
            raise DistilsetError("the dataset is ZCA-whitened but the set is not; load the dataset without ZCA")
        return x, data.test_y
    if syn.images.ndim == 4 and (tuple(data.info.mean) != syn.mean or tuple(data.info.std) != syn.std):
        c = x.shape[1]
        pixels = x * torch.tensor(data.info.std).view(1, c, 1, 1) + torch.tensor(data.info.mean).view(1, c, 1, 1)
        x = (pixels - torch.tensor(syn.mean).view(1, c, 1, 1)) / torch.tensor(syn.std).view(1, c, 1, 1)
    if syn.zca is not None:
        x = syn.zca.apply(x)
    return x, data.test_y


def texture_crop(syn: SyntheticSet) -> tuple[int, int] | None:
    """The crop size of a texture set (MTT texture mode: its images are larger, tileable canvases)."""
    texture = syn.extra.get("texture")
    return tuple(texture["crop"]) if texture else None


def default_protocol(syn: SyntheticSet) -> str:
    return "recipe" if syn.lrs is not None else "standard"


def evaluate(
    syn: SyntheticSet,
    data: Dataset,
    net: str | None = None,
    net_kwargs: dict | None = None,
    protocol: str | None = None,
    repeats: int = 5,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 256,
    dsa_strategy: str | None = "auto",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    init_pool: list[dict[str, torch.Tensor]] | None = None,
    optimizer: str = "sgd",
) -> EvalResult:
    """Train ``repeats`` fresh nets on ``syn`` and test them on ``data``'s test split.

    ``net``: defaults to the set's distillation net, else ``convnet``. ``protocol``: ``recipe`` for sets
    with learned lrs and a step order, else ``standard``. ``dsa_strategy``: ``auto`` uses the strategy the
    set was distilled with (none if it has none); ``None`` turns augmentation off. ``epochs``: default 300,
    or 1000 with DSA (DC). ``lr``: default the set's learned ``train_lr``, else 0.01.
    """
    protocol = protocol or default_protocol(syn)
    if protocol not in PROTOCOLS:
        raise DistilsetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if repeats < 1:
        raise DistilsetError(f"repeats must be >= 1, got {repeats}")
    spec = syn.net or {}
    if net is None:
        net = spec.get("name", "convnet")
        net_kwargs = {**spec.get("kwargs", {}), **(net_kwargs or {})}
    net_kwargs = dict(net_kwargs or {})
    init = spec.get("init", "default") if net == spec.get("name") else "default"
    test_x, test_y = align_test_data(syn, data)
    test_x, test_y = test_x.to(device), test_y.to(device)
    x, y = syn.images.to(device), syn.labels.to(device)
    if dsa_strategy == "auto":
        dsa_strategy = syn.dsa_strategy
    cfg = StandardProtocol(
        epochs=epochs if epochs is not None else (1000 if dsa_strategy else 300),
        lr=lr if lr is not None else (syn.train_lr or (0.001 if optimizer == "adam" else 0.01)),
        batch_size=batch_size,
        dsa_strategy=dsa_strategy,
        optimizer=optimizer,
        crop=texture_crop(syn),
    )
    if protocol == "recipe":
        if spec and net != spec.get("name"):
            raise DistilsetError(
                f"the recipe was learned for net {spec.get('name')!r}; evaluate it with that net "
                "or use --protocol standard"
            )
        if syn.init_regime == "random-pretrained" and not init_pool:
            raise DistilsetError(
                "recipe evaluation of a random-pretrained set needs held-out pretrained nets: pass init_pool= "
                "(distilset.methods.dd.pretrain_pool) or use --protocol standard"
            )
    seeds = [seed + r for r in range(repeats)]
    runs = []
    start = time.perf_counter()
    for r, s in enumerate(tqdm(seeds, desc=f"evaluate ({protocol})", disable=not progress)):
        model = create_net(net, tuple(test_x.shape[1:]), syn.num_classes, seed=s, init=init, **net_kwargs).to(device)
        if protocol == "recipe":
            theta0 = syn.init_params if syn.init_params else None
            if syn.init_regime == "random-pretrained" and init_pool:
                theta0 = init_pool[r % len(init_pool)]
            if theta0 is not None:
                _load_init(model, theta0)
            train_recipe(model, syn)
        else:
            train_standard(model, x, y, cfg, seed=s, progress=progress)
        runs.append(accuracy(model, test_x, test_y))
    wall = time.perf_counter() - start
    mean = sum(runs) / len(runs)
    std = math.sqrt(sum((r - mean) ** 2 for r in runs) / len(runs))
    settings = asdict(cfg) if protocol == "standard" else {"steps": len(syn.lrs), "init_regime": syn.init_regime}
    return EvalResult(
        protocol=protocol,
        net=net,
        net_kwargs=net_kwargs,
        dataset=data.info.name,
        epochs=cfg.epochs if protocol == "standard" else None,
        repeats=repeats,
        seeds=seeds,
        runs=runs,
        accuracy_mean=mean,
        accuracy_std=std,
        wall_time_s=wall,
        settings={**settings, "device": device, "set_size": len(syn), "init": init},
    )


__all__ = [
    "EvalResult",
    "StandardProtocol",
    "evaluate",
    "soft_cross_entropy",
    "accuracy",
    "train_recipe",
    "train_standard",
]
