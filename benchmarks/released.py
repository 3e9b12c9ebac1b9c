"""The papers' released code, timed beside distilset on the same data and workload (``speed.py --reference``).

Nothing of the released code is committed. Its checkouts and their venv are prepared by hand, by the commands in
``SETUP`` (recorded in every row as its ``note``), under ``--reference-dir`` (default /tmp/distilset-released):

- ``venv``: ``pip install torch==2.14.1 torchvision==0.29.1`` (the released code needs torchvision, which cannot
  live beside the project's torch 2.13) and what the codes import (kornia, wandb run with ``WANDB_MODE=disabled``,
  tqdm, scipy, matplotlib);
- ``dataset-distillation`` (Wang et al., SsnL's code), ``mtt-distillation`` (Cazenavette et al.), and
  ``DatasetCondensation`` (Zhao et al.: DC, DSA, DM), cloned from GitHub; MTT's ``distill.py`` moves its saved
  images to the CUDA device unconditionally (one ``.cuda()``), which ``SETUP`` replaces by ``.to(args.device)``
  so that it runs on a CPU, and its ``utils.get_dataset`` has no MNIST branch: ``SETUP`` inserts
  DatasetCondensation's (the same lineage of code). Two patches follow from torch 2.x, not from the methods: the
  ConvNets' ``out.view`` becomes ``out.reshape`` (their DSA crop leaves channels-last maps), and DD's
  ``optimizer.zero_grad()`` keeps zero tensors (``set_to_none=False``, the default before torch 2.0), since its
  ``accumulate_grad`` adds into ``.grad`` in place. Nothing else is changed.

The data: distilset's split of the dataset (mnist5k: its 4,000 training and 1,000 test digits; Fashion-MNIST: its
60,000 / 10,000) written back as 8-bit pixels in the IDX files torchvision's ``MNIST`` / ``FashionMNIST`` read,
so the released code loads exactly the images distilset trains on (its own normalisation applied on top).

Time per iteration by difference: the released script runs whole for ``n1`` and for ``n2`` outer iterations (the
same command otherwise); (T(n2) - T(n1)) / (n2 - n1) cancels what both runs do once (loading the data, building
the nets, the evaluation at iteration 0 with 1 net for 1 epoch, saving). Peak memory: the larger of the two
processes' peak resident sets. distilset's side is ``speed.py``'s own row of the same workload, each a fresh
process; the three processes alternate (ours, released n1, released n2, ours, ...) for ``Workload.rounds`` rounds
and each side reports its median.

DD's released code times its own iterations: with ``--log_interval 1`` it logs each one's data time (loading 1,024
real images through torchvision's transforms) and train time (forward, backward, step). Its difference of runs
spread by a factor of 2-3 between rounds (the evaluation and PNG figures each run draws at epoch 0 vary), so DD's
rows instead take the median over one run's iterations past the first epoch of data time + train time (logged to
1/100 s) for the released side (``Workload.logged``); the run is still whole and alternates with ours.
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROUNDS = 2
SETUP = (
    "python3.11 -m venv $R/venv && $R/venv/bin/pip install torch==2.14.1 torchvision==0.29.1 kornia wandb tqdm six "
    "pyyaml scipy matplotlib; git clone https://github.com/SsnL/dataset-distillation $R/dataset-distillation; "
    "git clone https://github.com/GeorgeCazenavette/mtt-distillation $R/mtt-distillation; "
    "sed -i 's/image_save = image_syn.cuda()/image_save = image_syn.to(args.device)/' $R/mtt-distillation/distill.py; "
    "in $R/mtt-distillation/utils.py, get_dataset, before its final `else: exit(...)`: the MNIST branch of "
    "DatasetCondensation's utils.get_dataset (same authors' lineage; MTT's code has none), plus "
    "`class_map = {x: x for x in range(num_classes)}`; "
    "sed -i 's/out = out.view(out.size(0), -1)/out = out.reshape(out.size(0), -1)/' $R/mtt-distillation/networks.py "
    "(its DSA crop leaves channels-last maps, which torch 2.14 keeps through the ConvNet, and `view` refuses), "
    "and the same in $R/DatasetCondensation/networks.py; "
    "sed -i 's/            self.optimizer.zero_grad()$/            self.optimizer.zero_grad(set_to_none=False)/' "
    "$R/dataset-distillation/train_distilled_image.py (torch >= 2.0 clears gradients to None, and the code adds "
    "into them in place); "
    "git clone https://github.com/VICO-UoE/DatasetCondensation $R/DatasetCondensation"
)


@dataclass(frozen=True)
class Workload:
    """One released-code workload: the repository, its script and arguments (``{n}``: outer iterations, ``{data}``,
    ``{work}``), the two iteration counts, distilset's row of the same work, and how the two differ."""

    repo: str
    script: str
    args: str
    n1: int
    n2: int
    ours: str
    per_iteration: int = 1
    """Outer iterations per unit of ``{n}`` (DD's ``--epochs`` over mnist5k's 4,000 images: 4 batches of 1,024)."""
    differences: str = ""
    setup: str = ""
    """A command run once before the rows (MTT's expert buffers)."""
    rounds: int = ROUNDS
    """Alternating rounds (DD's, seconds each, take more: its iterations are short and the machine's speed drifts)."""
    logged: bool = False
    """Time per iteration from the released code's own log (DD) instead of the difference of two runs."""
    scratch: str = ""
    """A folder under ``{work}`` removed before each run (DD's results folder: a second run into it reads the first
    run's options back with a ``yaml.load`` that today's PyYAML refuses)."""


DD = (
    "--mode distill_basic --dataset MNIST --arch LeNet --distill_steps 10 --distill_epochs {epochs} "
    "--distilled_images_per_class_per_step 1 --train_nets_type known_init --n_nets 1 --test_nets_type same_as_train "
    "--batch_size 1024 --device_id -1 --num_workers 0 --dataset_root {data} --results_dir {work}/results "
    "--log_interval 1 --checkpoint_interval 100000 --epochs {n}"
)
DD_DIFFERENCES = (
    "the released code loads each real batch of 1,024 images through torchvision's transforms (its logged data time, "
    "counted), logs each iteration's loss (--log_interval 1: one .item() per iteration) and would keep a checkpoint "
    "each --checkpoint_interval epochs (set out of reach here)"
)
MTT = (
    "--dataset MNIST --model ConvNetW32 --ipc 10 --syn_steps {steps} --expert_epochs 1 --max_start_epoch 1 "
    "--lr_img 1000 --lr_lr 1e-05 --lr_teacher 0.01 --dsa True --pix_init real --num_eval 1 --epoch_eval_train 1 "
    "--eval_it 100000 --data_path {data} --buffer_path {work}/buffers --Iteration {n}"
)
MTT_BUFFERS = (
    "buffer.py --dataset MNIST --model ConvNetW32 --num_experts 1 --train_epochs 3 --dsa True --save_interval 1 "
    "--data_path {data} --buffer_path {work}/buffers"
)
MATCHING = (
    "--dataset FashionMNIST --model ConvNet --ipc 10 --num_exp 1 --num_eval 1 --epoch_eval_train 1 --eval_mode S "
    "--data_path {data} --save_path {work}/result --Iteration {n}"
)
WORKLOADS: dict[str, Workload] = {
    "dd-T30": Workload(
        "dataset-distillation", "main.py", DD.replace("{epochs}", "3"), 2, 6, "dd-T30", per_iteration=4,
        scratch="results", logged=True, rounds=4,
        differences=DD_DIFFERENCES,
    ),
    "dd-T100": Workload(
        "dataset-distillation", "main.py", DD.replace("{epochs}", "10"), 1, 5, "dd-T100-plain", per_iteration=4,
        scratch="results", logged=True, rounds=4, differences=DD_DIFFERENCES,
    ),
    **{
        f"mtt-s{s}": Workload(
            "mtt-distillation", "distill.py", MTT.replace("{steps}", str(s)), 2, 2 + max(3, 60 // s),
            f"mtt-s{s}-plain", setup=MTT_BUFFERS,
            differences="the released code's experts are its own buffer.py's (1 expert, 3 epochs, the same net); "
            "the student is its ReparamModule (one flat parameter vector)",
        )
        for s in (10, 20, 40)
    },
    "dc": Workload("DatasetCondensation", "main.py", "--method DC " + MATCHING, 1, 4, "dc-fashion"),
    "dm": Workload(
        "DatasetCondensation", "main_DM.py",
        MATCHING, 2, 12, "dm-fashion",
    ),
}  # fmt: skip


def write_idx(images: torch.Tensor, labels: torch.Tensor, directory: Path, prefix: str) -> None:
    """``prefix-images-idx3-ubyte`` and ``prefix-labels-idx1-ubyte``: 8-bit images (N, H, W) and labels in the IDX
    format of LeCun's MNIST files (big-endian magic 0x803 / 0x801 and sizes, then the bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    head = np.array([0x803, n, h, w], dtype=">i4").tobytes()
    (directory / f"{prefix}-images-idx3-ubyte").write_bytes(head + images.numpy().astype(np.uint8).tobytes())
    head = np.array([0x801, n], dtype=">i4").tobytes()
    (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(head + labels.numpy().astype(np.uint8).tobytes())


def export_dataset(name: str, root: Path, folder: str) -> Path:
    """distilset's ``name`` as torchvision's ``folder`` (MNIST, FashionMNIST) under ``root``: ``root/folder/raw``."""
    import distilset as ds

    data = ds.load_dataset(name)
    raw = root / folder / "raw"
    for split, x, y in (("train", data.train_x, data.train_y), ("t10k", data.test_x, data.test_y)):
        pixels = (data.info.norm.denormalize(x) * 255).round().clamp(0, 255)[:, 0].to(torch.uint8)
        write_idx(pixels, y, raw, split)
    return root


LOGGED = re.compile(r"Data Time: ([0-9.]+)s\s+Train Time: ([0-9.]+)s")


def logged_seconds(output: str, skip: int) -> tuple[float, float]:
    """Medians of the seconds per iteration DD's released code logs past its first ``skip`` iterations: data time +
    train time, and train time alone."""
    times = [(float(d), float(t)) for d, t in LOGGED.findall(output)][skip:]
    if not times:
        raise SystemExit(f"no iteration times past the first {skip} in the released code's log:\n{output[-2000:]}")
    return median([d + t for d, t in times]), median([t for _, t in times])


def run_released(python: Path, code: Path, script: str, args: str) -> tuple[float, float, str]:
    """Run one released script to its end: (wall seconds, peak resident MB of the process, its output)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [str(python), script, *shlex.split(args)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest of all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{script} {args} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def import_mb(python: Path, statement: str) -> float:
    """Peak resident MB of a Python process that runs only ``statement`` (the libraries' floor under every row)."""
    proc = subprocess.Popen([str(python), "-c", statement], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{python} -c {statement!r} failed")
    return round(usage.ru_maxrss / 1024, 1)


def median(values: list[float]) -> float:
    return statistics.median(values)
