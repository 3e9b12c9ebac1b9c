"""Expert trajectories for MTT: nets trained on the real data, their parameters saved after every epoch.

Layout of an experts directory::

    manifest.json              settings, parameter names/shapes, finished experts and their test accuracy
    expert_0000.safetensors    tensors "epoch_000" .. "epoch_E": all parameters flattened, one vector per epoch

Each expert file is written to a temporary name and renamed when complete, then the manifest is rewritten
the same way, so an interrupted run resumes at the first missing expert. ``ExpertBuffer`` reads one epoch
vector at a time through safetensors' memory map: distillation touches only the epochs it samples
(``max_start_epoch + expert_epochs``), never a whole buffer.

Expert training follows MTT's ``buffer.py``: SGD lr 0.01, no momentum, no weight decay, batch 256, DSA
drawn per image on each batch, parameters recorded at initialisation and after each epoch. It runs through
the one training loop (``distilset.train.fit``). Deviation, named: on small training sets the batch shrinks
(to at most N / 50, at least 32) so an epoch still holds about 50 SGD steps; at batch 256 an epoch of the
1,438 ``digits`` images is 6 steps and the experts barely learn.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from safetensors import SafetensorError, safe_open

from distilset import jsonread
from distilset.config import Config, auto, check_seed
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.files import EXPERTS_MANIFEST
from distilset.io import save_tensors, write_json
from distilset.jobs import run_jobs
from distilset.jsonread import load_json
from distilset.nets import create_net
from distilset.nets.options import NetOption
from distilset.nets.registry import SIZE_BOUNDS
from distilset.recipes import Standard
from distilset.rundir import prepare_out, releases_locks
from distilset.train import accuracy, fit

MANIFEST = EXPERTS_MANIFEST
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def expert_batch_for(n_train: int) -> int:
    """MTT's batch of 256, shrunk on small training sets so an epoch holds about 50 SGD steps (at least 32)."""
    return max(32, min(256, n_train // 50))


@dataclass(frozen=True)
class ExpertConfig(Config, NetOption):
    """How MTT's expert trajectories are trained and stored (MTT ``buffer.py`` defaults)."""

    FIELD_DOCS: ClassVar[dict[str, str]] = {"net": "Network of the experts (MTT distils with the same one)."}
    AUTO_DOCS: ClassVar[dict[str, str]] = {"net": "convnet"}
    epochs: int = 50
    """Epochs per expert; its parameters are stored after each."""
    lr: float = 0.01
    """SGD learning rate."""
    momentum: float = 0.0
    """SGD momentum."""
    weight_decay: float = 0.0
    """Weight decay."""
    batch_size: int | None = auto("256, or fewer on small training sets: about 50 steps per epoch, at least 32")
    """Minibatch size."""
    dsa: bool = True
    """Augment each batch with the dataset's DSA strategy (drawn per image)."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage precision of the trajectories (float16: half the disk)."""

    def check(self) -> None:
        self.require_positive("lr", "epochs", "batch_size")
        self.require_at_least(0, "momentum", "weight_decay")

    def resolve(self, data: Dataset) -> tuple[ExpertConfig, dict[str, str]]:
        n = len(data.train_x)
        return self.fill_net(
            data.image_shape,
            ("convnet", "MTT's ConvNet"),
            batch_size=(expert_batch_for(n), f"about 50 SGD steps per epoch of {n} images"),
        )

    def recipe(self, data: Dataset) -> Standard:
        return Standard(
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epochs=self.epochs,
            batch_size=self.batch_size,
            schedule="constant",
            dsa=data.info.dsa_strategy if self.dsa else None,
        )


def expert_path(out: Path, i: int) -> Path:
    return out / f"expert_{i:04d}.safetensors"


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu()


def train_expert(
    data: Dataset, cfg: ExpertConfig, seed: int, device: str = "cpu", progress: bool = False, desc: str = "expert"
) -> tuple[list[torch.Tensor], float]:
    """Train one expert; returns the flat parameters at epochs 0..E and its final test accuracy. ``desc`` names
    its progress."""
    if not cfg.resolved:  # `train_experts` hands over the config it resolved
        cfg, _ = cfg.resolve(data)
    net = create_net(cfg.net, data.image_shape, data.num_classes, seed=seed, **cfg.net_kwargs).to(device)
    snapshots = [_flat(net)]
    fit(
        net,
        data.train_x.to(device),
        data.train_y.to(device),
        cfg.recipe(data),
        seed=seed,
        progress=progress,
        desc=desc,
        on_epoch=lambda epoch, model: snapshots.append(_flat(model)),
    )
    return snapshots, accuracy(net, data.test_x.to(device), data.test_y.to(device))


def _manifest_settings(data: Dataset, cfg: ExpertConfig) -> dict:
    net = create_net(cfg.net, data.image_shape, data.num_classes, seed=0, **cfg.net_kwargs)
    return {
        "dataset": data.info.name,
        "zca": data.zca is not None,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "dsa_strategy": data.info.dsa_strategy if cfg.dsa else None,
        "config": cfg.to_json(),
        "params": [[k, list(v.shape)] for k, v in net.named_parameters()],
    }


@releases_locks
def train_experts(
    data: Dataset,
    out: str | Path,
    experts: int,
    cfg: ExpertConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    ray: bool | str | None = None,
    overwrite: bool = False,
) -> ExpertBuffer:
    """Train ``experts`` experts into ``out``, skipping those already there (resume). Expert i has seed
    ``seed + i`` and file ``expert_i``; with ``ray`` each is a Ray task (``distilset.jobs``). ``overwrite``
    deletes the experts already there (their files and manifest; nothing else) and trains all anew."""
    cfg, _ = (cfg or ExpertConfig()).resolve(data)
    if experts < 1:
        raise ConfigError(f"`experts` must be >= 1, got {experts}")
    check_seed(seed)
    if ray and device.startswith("cuda"):
        raise ConfigError("`ray` runs experts as CPU tasks; train them on CUDA without `ray`, or on the CPU")
    out = prepare_out(out, offers=()).resolve()  # refuses a directory holding a run; absolute for Ray workers
    settings = _manifest_settings(data, cfg)
    manifest = {"format": "distilset.experts", "version": 2, **settings, "experts": {}}
    if overwrite and (out / MANIFEST).exists():
        for path in out.glob("expert_*.safetensors"):
            if re.fullmatch(r"expert_\d{4,}\.safetensors", path.name):
                path.unlink()
        (out / MANIFEST).unlink()
    if (out / MANIFEST).exists():
        old = ExpertBuffer.read_manifest(out)
        different = [k for k in settings if old.get(k) != settings[k]]
        if different:
            raise DistilsetError(
                f"{out} holds experts made with other settings ({different[0]}: {old.get(different[0])} here, "
                f"{settings[different[0]]} asked for); use another experts directory or the same settings, or give "
                "`overwrite` to replace them"
            )
        manifest["experts"] = {k: v for k, v in old["experts"].items() if expert_path(out, int(k)).exists()}
    todo = [i for i in range(experts) if str(i) not in manifest["experts"]]
    jobs = [(data, cfg, seed + i, device, out, i, progress and not ray) for i in todo]

    def record(n: int, entry: dict) -> None:  # the manifest lists an expert once its file is complete
        manifest["experts"][str(todo[n])] = entry
        write_json(out / MANIFEST, manifest)
        if progress:
            print(f"expert {todo[n]}: test accuracy {100 * entry['test_accuracy']:.2f} % ({entry['train_s']:.0f} s)")

    run_jobs(expert_job, jobs, ray=ray, on_done=record)
    return ExpertBuffer(out)


def expert_job(
    data: Dataset, cfg: ExpertConfig, seed: int, device: str, out: Path, index: int, progress: bool = False
) -> dict:
    """Train expert ``index`` and write its file (atomically, under its own name: a rerun replaces it whole);
    returns its manifest entry."""
    t0 = time.perf_counter()
    snaps, acc = train_expert(data, cfg, seed=seed, device=device, progress=progress, desc=f"expert {index}")
    dtype = DTYPES[cfg.dtype]
    save_tensors(expert_path(out, index), {f"epoch_{e:03d}": s.to(dtype).contiguous() for e, s in enumerate(snaps)})
    return {"seed": seed, "test_accuracy": acc, "train_s": time.perf_counter() - t0}


class ExpertBuffer:
    """Read-only access to an experts directory, one memory-mapped epoch vector at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST).exists():
            raise DistilsetError(
                f"no expert trajectories in {self.path} ({MANIFEST} missing); make them with "
                f"`distilset experts --dataset NAME --out {self.path}`"
            )
        self.manifest = self.read_manifest(self.path)
        self.ids = sorted(int(k) for k in self.manifest["experts"])
        if not self.ids:
            raise DistilsetError(f"{self.path} has no finished expert yet; run `distilset experts` to completion")
        self.epochs = int(self.manifest["config"]["epochs"])
        self.param_shapes = [(k, tuple(s)) for k, s in self.manifest["params"]]
        self.numel = sum(math.prod(s) for _, s in self.param_shapes)

    @staticmethod
    def read_manifest(path: Path) -> dict:
        """The manifest of an experts directory, every field type- and range-checked (one error naming it)."""
        mf = Path(path) / MANIFEST
        remake = "remake the experts with `distilset experts`"
        try:
            manifest = load_json(mf)
        except DistilsetError as e:
            raise DistilsetError(f"{e}; {remake}") from e
        version = manifest.get("version") if isinstance(manifest, dict) else None
        if version != 2 or isinstance(version, bool) or "experts" not in manifest:
            raise DistilsetError(f"{mf} is not a manifest this distilset reads (version {version!r}, need 2); {remake}")
        try:
            _check_manifest(manifest)
        except DistilsetError as e:
            raise DistilsetError(f"{mf}: {e}; the experts directory is damaged: {remake}") from e
        return manifest

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
        remake = "delete the file and rerun `distilset experts` with the same settings to remake it"
        try:
            with safe_open(str(path), framework="pt") as f:
                vec = f.get_tensor(f"epoch_{epoch:03d}")
        except (OSError, SafetensorError, RuntimeError, ValueError) as e:
            raise DistilsetError(f"cannot read epoch {epoch} of expert {expert} from {path} ({e}); {remake}") from e
        problem = None
        if vec.dtype not in DTYPES.values():
            problem = f"{vec.dtype}, not a float32 or float16 vector"
        elif tuple(vec.shape) != (self.numel,):
            problem = f"of shape {tuple(vec.shape)}, not the ({self.numel},) parameters the manifest lists"
        elif not torch.isfinite(vec).all():
            problem = "NaN or inf"
        if problem:
            raise DistilsetError(f"epoch {epoch} of expert {expert} in {path} is {problem}; {remake}")
        return vec.float()

    def verify(self, last_epoch: int | None = None) -> None:
        """Read every expert's epochs 0..``last_epoch`` (default: all) once and check each as ``flat`` does (dtype,
        shape, finite): a missing or damaged expert fails before a run's first iteration, not when it is first
        sampled hours later."""
        for expert in self.ids:
            for epoch in range(min(self.epochs, self.epochs if last_epoch is None else last_epoch) + 1):
                self.flat(expert, epoch)

    def params(self, expert: int, epoch: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The same parameters as a name -> tensor dict (views of one vector)."""
        return unflatten(self.flat(expert, epoch).to(device), self.param_shapes)


MAX_EXPERT_EPOCHS = 10_000
"""Most epochs a manifest may claim (MTT's buffers have 50; the bound keeps a damaged count from meaning hours)."""


def _check_manifest(m: dict) -> None:
    """Every field of an experts manifest, and its parameter list against the net its config builds."""
    jsonread.string(m.get("dataset"), "dataset")
    if not isinstance(m.get("zca"), bool):
        raise DistilsetError(f"zca must be true or false, got {m.get('zca')!r:.40}")
    shape = jsonread.whole_list(m.get("image_shape"), "image_shape", 1, 4096)
    if len(shape) != 3:
        raise DistilsetError(f"image_shape must be [C, H, W], got {shape}")
    classes = jsonread.whole(m.get("num_classes"), "num_classes", 2, 100_000)
    if m.get("dsa_strategy") is not None:
        jsonread.string(m["dsa_strategy"], "dsa_strategy")
    made = jsonread.mapping(m.get("config"), "config")
    try:
        cfg = ExpertConfig.from_json(made)
    except DistilsetError as e:
        raise DistilsetError(f"config: {e}") from e
    jsonread.whole(made.get("epochs"), "config.epochs", 1, MAX_EXPERT_EPOCHS)
    jsonread.whole(made.get("batch_size"), "config.batch_size", 1, 1 << 20)
    for option, (low, high) in SIZE_BOUNDS.items():
        if option in cfg.net_kwargs:
            jsonread.whole(cfg.net_kwargs[option], f"config.net_kwargs.{option}", low, high)
    params = m.get("params")
    if not isinstance(params, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list) for p in params
    ):
        raise DistilsetError(f"params must be a list of [name, shape] pairs, got {params!r:.60}")
    for _, dims in params:
        jsonread.whole_list(dims, "params shapes", 0, 1 << 31)
    try:
        with torch.device("meta"):  # shapes only
            net = create_net(cfg.net, tuple(shape), classes, **cfg.net_kwargs)
    except DistilsetError as e:
        raise DistilsetError(f"config: net {cfg.net} {cfg.net_kwargs} cannot be built for {shape}: {e}") from e
    want = [[k, list(v.shape)] for k, v in net.named_parameters()]
    if params != want:
        raise DistilsetError(f"params do not match the parameters of net {cfg.net} {cfg.net_kwargs} it names")
    experts = jsonread.mapping(m.get("experts"), "experts")
    for key, info in experts.items():
        if not key.isdigit() or len(key) > 5 or not isinstance(info, dict):
            raise DistilsetError(f"experts must map expert numbers to their records, got {key!r:.20}: {info!r:.40}")
        if "test_accuracy" in info:
            jsonread.number(info["test_accuracy"], f"experts.{key}.test_accuracy", 0.0, 1.0)


def unflatten(vec: torch.Tensor, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vec[i : i + n].view(shape)
        i += n
    return out
