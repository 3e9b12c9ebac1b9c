"""Scale-out throughput: Ray for independent jobs, torch.distributed for data-parallel distillation, 1 and 2 workers.

    .venv/bin/python benchmarks/scale.py           # every missing row (about 20 minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --table   # the README table

Every worker has one thread (``OMP_NUM_THREADS=1``), so "2 workers" uses the 2 cores of this machine once each;
"1 process, 2 threads" is the plain run on both cores for comparison. Rows:

- ``experts``: MTT expert trajectories per minute (mnist5k, ConvNet-3 width 32, 3 epochs each, 4 experts),
  sequential vs Ray tasks on a local cluster of 2 CPUs (``train_experts(..., ray=True)``), its workers started
  before the clock starts;
- ``evaluate``: networks per minute of a cross-architecture sweep (mnist5k, 10 random images per class; MLP,
  LeNet, ConvNet, ConvNet-BN; 1 repeat of DC's 300 epochs each), sequential vs Ray;
- ``repeats``: repeats per minute of one evaluation (mnist5k, 10 random images per class, ConvNet width 32, 4
  repeats of DC's protocol), sequential vs one Ray task per repeat;
- ``fedmd``, ``fedmd-mnist5k``: whole FedMD runs per minute (``teach fedmd`` on digits or mnist5k, defaults: 10
  parties, 20 rounds), sequential vs parties set up as Ray tasks and run on Ray actors (one per CPU);
- ``dm``, ``kip``, ``frepo``, ``mtt``: outer iterations per second on mnist5k with default flags (``kip-conv``:
  KIP with the convolutional kernel, 1 image per class, 200 targets; MTT: 2
  trajectories per iteration over 2 experts of ConvNet-3 width 32, trained before the clock starts), one process
  vs 2 ranks under torchrun (gloo), from the run's own ``history.json`` (the first 2 iterations left out as
  warm-up).

The parallel efficiency is (throughput with 2 workers) / (2 x throughput with 1). The ``estimate`` row puts the
paper's expert buffer on this machine: 100 experts x 50 epochs of ConvNet-3 (width 128) on CIFAR-10's 50,000
images, at the training speed measured here for that network on 32x32x3 inputs, and the storage of its
trajectories (parameters x 51 snapshots x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile

import distilset as ds
from distilset.jobs import run_jobs

OUT = RESULTS / "scale.json"
EXPERTS, EVAL_NETS, REPEATS = 4, ["mlp", "lenet", "convnet", "convnet-bn"], 4
SETTINGS = {"benchmark": "scale", "threads_per_worker": 1, "version": 2}


def _ray(workers: int) -> bool | None:
    """A local Ray cluster of exactly ``workers`` CPUs (None: the sequential path)."""
    if workers == 1:
        return None
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})  # fmt: skip
        # start the workers and import distilset in them before any timing (a one-off cost of a few seconds)
        run_jobs(_warm_up, [(i,) for i in range(2 * workers)], ray=True)
    return True


def _warm_up(i: int) -> int:
    return len(ds.list_nets()) + i


def _experts(workers: int) -> dict:
    data = ds.load_dataset("mnist5k")
    cfg = ds.ExpertConfig(net="convnet", net_kwargs={"width": 32}, epochs=3)
    ray = _ray(workers)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ds.train_experts(data, Path(tmp) / "e", EXPERTS, cfg, ray=ray)
        seconds = time.perf_counter() - start
    return {"jobs": EXPERTS, "seconds": round(seconds, 2), "per_minute": round(60 * EXPERTS / seconds, 2)}


def _evaluate(workers: int) -> dict:
    data = ds.load_dataset("mnist5k")
    syn = ds.baseline("random", data, ipc=10, seed=0)
    ray = _ray(workers)
    start = time.perf_counter()
    results = ds.evaluate_nets(syn, data, EVAL_NETS, repeats=1, ray=ray)
    seconds = time.perf_counter() - start
    return {"jobs": len(EVAL_NETS), "seconds": round(seconds, 2), "per_minute": round(60 * len(EVAL_NETS) / seconds, 2),
            "accuracies": {r.net: r.accuracy_mean for r in results}}  # fmt: skip


def _repeats(workers: int) -> dict:
    data = ds.load_dataset("mnist5k")
    syn = ds.baseline("random", data, ipc=10, seed=0)
    ray = _ray(workers)
    start = time.perf_counter()
    result = ds.evaluate(syn, data, net="convnet", net_kwargs={"width": 32}, repeats=REPEATS, ray=ray)
    seconds = time.perf_counter() - start
    return {"jobs": REPEATS, "seconds": round(seconds, 2), "per_minute": round(60 * REPEATS / seconds, 2),
            "runs": result.runs}  # fmt: skip


def _fedmd(workers: int, dataset: str = "digits") -> dict:
    data = ds.load_dataset(dataset)
    ray = _ray(workers)
    start = time.perf_counter()
    report = ds.teach("fedmd", data, ray=ray).report
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "per_minute": round(60 / seconds, 3), "mean_final": report["mean_final"]}


def _distill(method: str, workers: int, *options: str, iterations: int = 12) -> dict:
    """``distill METHOD`` on mnist5k in one process or under torchrun; outer iterations per second from the run's
    own history (the first 2 left out as warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"]
        cmd = [*(launcher if workers > 1 else [sys.executable]), "-m", "distilset.cli", "distill", method,
               "--dataset", "mnist5k", "--iterations", str(iterations), *options, "--out", f"{tmp}/run"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        history = json.loads(Path(f"{tmp}/run/history.json").read_text())
    seconds = history[-1]["time_s"] - history[1]["time_s"]
    n = len(history) - 2
    return {"iterations": n, "seconds": round(seconds, 2), "per_second": round(n / seconds, 3),
            "options": list(options)}  # fmt: skip


def _dm(workers: int) -> dict:
    return _distill("dm", workers)


def _kip(workers: int) -> dict:
    return _distill("kip", workers, iterations=22)


def _kip_conv(workers: int) -> dict:
    return _distill("kip", workers, "--arch", "conv", "--ipc", "1", "--target-batch", "200", iterations=10)


def _frepo(workers: int) -> dict:
    return _distill("frepo", workers, iterations=22)


def _mtt(workers: int) -> dict:
    experts = Path(tempfile.gettempdir()) / "distilset-scale-experts"  # trained once, outside the clock
    if not (experts / "manifest.json").exists():
        cfg = ds.ExpertConfig(net="convnet", net_kwargs={"width": 32}, epochs=3)
        ds.train_experts(ds.load_dataset("mnist5k"), experts, 2, cfg)
    return _distill("mtt", workers, "--experts-dir", str(experts), "--trajectories", "2", "--expert-epochs", "2",
                    "--max-start-epoch", "1", iterations=8)  # fmt: skip


def _estimate() -> dict:
    net = ds.create_net("convnet", (3, 32, 32), 10, width=128, seed=0)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), 0.01)
    x, y = torch.randn(256, 3, 32, 32), torch.randint(10, (256,))
    for i in range(6):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_s = 5 * 256 / (time.perf_counter() - start)
    expert_s = 50 * 50_000 / per_s
    storage = params * 51 * 4
    return {"convnet128_cifar_images_per_s": round(per_s, 1), "params": params,
            "hours_per_expert": round(expert_s / 3600, 2),
            "hours_100_experts_1_worker": round(100 * expert_s / 3600, 1),
            "mb_per_expert": round(storage / 2**20, 1), "gb_100_experts": round(100 * storage / 2**30, 2)}  # fmt: skip


ROWS = {"experts": _experts, "evaluate": _evaluate, "repeats": _repeats, "fedmd": _fedmd,
        "fedmd-mnist5k": lambda workers: _fedmd(workers, "mnist5k"), "dm": _dm, "kip": _kip, "kip-conv": _kip_conv,
        "frepo": _frepo, "mtt": _mtt}  # fmt: skip
UNITS = {
    "experts": ("expert trajectories / minute (Ray tasks)", "per_minute"),
    "evaluate": ("networks of a sweep evaluated / minute (Ray tasks)", "per_minute"),
    "repeats": ("repeats of one evaluation / minute (Ray tasks)", "per_minute"),
    "fedmd": ("FedMD runs (digits, 10 parties, 20 rounds) / minute (Ray actors)", "per_minute"),
    "fedmd-mnist5k": ("FedMD runs (mnist5k, 10 parties, 20 rounds) / minute (Ray actors)", "per_minute"),
    "dm": ("DM iterations / s (torchrun, gloo; classes sharded)", "per_second"),
    "kip": ("KIP iterations / s (torchrun; target batch sharded)", "per_second"),
    "kip-conv": ("KIP iterations / s, conv kernel, ipc 1, 200 targets (torchrun)", "per_second"),
    "frepo": ("FRePo iterations / s (torchrun; target batch sharded)", "per_second"),
    "mtt": ("MTT iterations of 2 trajectories / s (torchrun; trajectories sharded)", "per_second"),
}


def run(redo: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    results = ResultFile(OUT, SETTINGS)
    for name in redo:
        results.drop({"row": name})
    for name, fn in ROWS.items():
        for workers in (1, 2):
            if not results.has({"row": name, "workers": workers}):
                print(name, workers, "...", flush=True)
                results.add({"row": name, "workers": workers, **fn(workers)})
    if not results.has({"row": "estimate"}):
        results.add({"row": "estimate", **_estimate()})


def table() -> None:
    rows = json.loads(OUT.read_text())["rows"]
    print("| workload | unit | 1 worker | 2 workers | parallel efficiency |")
    print("|---|---|---|---|---|")
    for name, (unit, key) in UNITS.items():
        one = next((r for r in rows if r["row"] == name and r["workers"] == 1), None)
        two = next((r for r in rows if r["row"] == name and r["workers"] == 2), None)
        if one and two:
            print(f"| {name} | {unit} | {one[key]:g} | {two[key]:g} | {two[key] / (2 * one[key]):.2f} |")
    est = next((r for r in rows if r["row"] == "estimate"), None)
    if est:
        print(f"\nPaper-sized buffer on this CPU: ConvNet-3 width 128 trains {est['convnet128_cifar_images_per_s']:g} "
              f"CIFAR-sized images/s per worker, so one expert (50 epochs of 50,000 images) takes "
              f"{est['hours_per_expert']:g} h and 100 take {est['hours_100_experts_1_worker']:g} h on one worker "
              f"(W workers: that / W, each writing its own files); each expert's trajectory is "
              f"{est['mb_per_expert']:g} MB ({est['params']:,} parameters x 51 snapshots, float32), "
              f"{est['gb_100_experts']:g} GB for 100.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--redo", nargs="+", default=[], choices=list(ROWS), help="measure these rows again")
    args = parser.parse_args()
    table() if args.table else run(args.redo)


if __name__ == "__main__":
    main()
