"""Expert trajectories for MTT: nets trained on the real data, their parameters saved after every epoch.

Layout of an experts directory::

    manifest.json              settings, parameter names/shapes, finished experts and their test accuracy
    expert_0000.safetensors    tensors "epoch_000" .. "epoch_E": all parameters flattened, one vector per epoch

Each expert file is written to a temporary name and renamed when complete, then the manifest is rewritten
the same way, so an interrupted run resumes at the first missing expert. ``ExpertBuffer`` reads one epoch
vector at a time through safetensors' memory map: distillation touches only the epochs it samples
(``max_start_epoch + expert_epochs``), never a whole buffer.

Expert training follows MTT's ``buffer.py``: SGD lr 0.01, no momentum, no weight decay, batch 256, DSA
on each batch, parameters recorded at initialisation and after each epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from distilset.augment import dsa
from distilset.data.dataset import Dataset
from distilset.errors import DistilsetError
from distilset.evaluate import accuracy
from distilset.nets import create_net

MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class ExpertConfig:
    """How the experts are trained and stored (MTT ``buffer.py`` defaults)."""

    net: str = "convnet"
    net_kwargs: dict = field(default_factory=dict)
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True  # augment each batch with the dataset's DSA strategy
    dtype: str = "float32"  # or "float16": half the disk, parameters rounded to 11 bits


def expert_path(out: Path, i: int) -> Path:
    return out / f"expert_{i:04d}.safetensors"


def _write_atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu()


def train_expert(data: Dataset, cfg: ExpertConfig, seed: int, device: str = "cpu",
                 progress: bool = False) -> tuple[list[torch.Tensor], float]:  # fmt: skip
    """Train one expert; returns the flat parameters at epochs 0..E and its final test accuracy."""
    net = create_net(cfg.net, data.image_shape, data.num_classes, seed=seed, **cfg.net_kwargs).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    x, y = data.train_x.to(device), data.train_y.to(device)
    strategy = data.info.dsa_strategy if cfg.dsa else None
    snapshots = [_flat(net)]
    net.train()
    for _ in tqdm(range(cfg.epochs), desc=f"expert {seed}", leave=False, disable=not progress):
        perm = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx]
            if strategy:
                xb = dsa(xb, strategy, seed=int(torch.randint(2**62, (1,), generator=g)))
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            if not torch.isfinite(loss):
                raise DistilsetError(f"expert {seed} diverged (loss {loss.item()}); lower the expert lr ({cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        snapshots.append(_flat(net))
    return snapshots, accuracy(net, data.test_x.to(device), data.test_y.to(device))


def _manifest_settings(data: Dataset, cfg: ExpertConfig) -> dict:
    net = create_net(cfg.net, data.image_shape, data.num_classes, seed=0, **cfg.net_kwargs)
    return {
        "dataset": data.info.name,
        "zca": data.zca is not None,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "dsa_strategy": data.info.dsa_strategy if cfg.dsa else None,
        "config": asdict(cfg),
        "params": [[k, list(v.shape)] for k, v in net.named_parameters()],
    }


def train_experts(data: Dataset, out: str | Path, experts: int, cfg: ExpertConfig = ExpertConfig(),
                  seed: int = 0, device: str = "cpu", progress: bool = False) -> ExpertBuffer:  # fmt: skip
    """Train ``experts`` experts into ``out``, skipping those already there (resume)."""
    if cfg.dtype not in DTYPES:
        raise DistilsetError(f"unknown dtype {cfg.dtype!r}; choose float32 or float16")
    if experts < 1 or cfg.epochs < 1:
        raise DistilsetError(f"need at least one expert and one epoch, got {experts} experts, {cfg.epochs} epochs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _manifest_settings(data, cfg)
    manifest = {"format": "distilset.experts", "version": 1, **settings, "experts": {}}
    if (out / MANIFEST).exists():
        old = json.loads((out / MANIFEST).read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise DistilsetError(
                f"{out} holds experts made with other settings ({old.get('dataset')}, {old.get('config')}); "
                "use another --out or the same settings"
            )
        manifest["experts"] = {k: v for k, v in old["experts"].items() if expert_path(out, int(k)).exists()}
    for i in range(experts):
        if str(i) in manifest["experts"]:
            continue
        t0 = time.perf_counter()
        snaps, acc = train_expert(data, cfg, seed=seed + i, device=device, progress=progress)
        path = expert_path(out, i)
        tmp = path.with_name(f".{path.name}.tmp")
        dtype = DTYPES[cfg.dtype]
        save_file({f"epoch_{e:03d}": s.to(dtype).contiguous() for e, s in enumerate(snaps)}, str(tmp))
        os.replace(tmp, path)
        manifest["experts"][str(i)] = {"seed": seed + i, "test_accuracy": acc, "train_s": time.perf_counter() - t0}
        _write_atomic_json(out / MANIFEST, manifest)
        if progress:
            print(f"expert {i}: test accuracy {100 * acc:.2f} % ({time.perf_counter() - t0:.0f} s)")
    return ExpertBuffer(out)


class ExpertBuffer:
    """Read-only access to an experts directory, one memory-mapped epoch vector at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.exists():
            raise DistilsetError(
                f"no expert trajectories in {self.path} ({MANIFEST} missing); make them with "
                f"`distilset experts --dataset NAME --out {self.path}`"
            )
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise DistilsetError(f"{mf} is not valid JSON ({e}); remake the experts with `distilset experts`") from e
        self.ids = sorted(int(k) for k in self.manifest["experts"])
        if not self.ids:
            raise DistilsetError(f"{self.path} has no finished expert yet; run `distilset experts` to completion")
        self.epochs = int(self.manifest["config"]["epochs"])
        self.param_shapes = [(k, tuple(s)) for k, s in self.manifest["params"]]
        self.numel = sum(math.prod(s) for _, s in self.param_shapes)

    def __len__(self) -> int:
        return len(self.ids)

    def check_compatible(self, data: Dataset, net: str, net_kwargs: dict) -> None:
        m = self.manifest
        problems = []
        if m["dataset"] != data.info.name:
            problems.append(f"dataset {m['dataset']} (not {data.info.name})")
        if m["zca"] != (data.zca is not None):
            problems.append(
                f"ZCA {'on' if m['zca'] else 'off'} (the data has it {'on' if data.zca is not None else 'off'})"
            )
        if m["config"]["net"] != net or m["config"]["net_kwargs"] != net_kwargs:
            problems.append(f"net {m['config']['net']} {m['config']['net_kwargs']} (not {net} {net_kwargs})")
        if problems:
            raise DistilsetError(f"experts in {self.path} were trained with " + ", ".join(problems))

    def flat(self, expert: int, epoch: int) -> torch.Tensor:
        """Parameters of ``expert`` after ``epoch`` epochs, as one float32 vector."""
        if not 0 <= epoch <= self.epochs:
            raise DistilsetError(f"epoch {epoch} is outside the stored 0..{self.epochs}")
        path = expert_path(self.path, expert)
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(f"epoch_{epoch:03d}").float()
        except (OSError, SafetensorError) as e:
            raise DistilsetError(
                f"cannot read epoch {epoch} of expert {expert} from {path} ({e}); delete the file and rerun "
                "`distilset experts` with the same settings to remake it"
            ) from e

    def params(self, expert: int, epoch: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The same parameters as a name -> tensor dict (views of one vector)."""
        return unflatten(self.flat(expert, epoch).to(device), self.param_shapes)


def unflatten(vec: torch.Tensor, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vec[i : i + n].view(shape)
        i += n
    return out
