"""Shared plumbing for benchmark scripts: machine description, resumable JSON results, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from distilset import Dataset, DistilsetError, SyntheticSet, evaluate
from distilset.io import write_json
from distilset.jobs import run_jobs

RESULTS = Path(__file__).parent / "results"


def command_line() -> str:
    """The exact command that is running: the interpreter (relative to the working directory when under
    it) and ``sys.argv``, shell-quoted, so a row can be rerun by pasting it."""
    exe = sys.executable
    rel = os.path.relpath(exe) if exe else "python"
    return shlex.join([rel if not rel.startswith("..") else exe, *sys.argv])


def machine(device: str = "cpu") -> dict:
    """What the numbers were measured on; names the GPU when the device is one."""
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


class ResultFile:
    """A JSON file of rows, rewritten atomically (``distilset.io.write_json``) after each row so an
    interrupted run loses nothing. Each row records the command line that made it (``command``) unless the
    row already has its own ``command`` entry."""

    def __init__(self, path: Path, settings: dict, device: str = "cpu"):
        self.path = path
        self.data = {"settings": settings, "machine": machine(device), "rows": []}
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                self.data["rows"] = old["rows"]

    def has(self, key: dict) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.data["rows"])

    def drop(self, key: dict) -> None:
        """Forget the rows that match ``key`` (before they are run again)."""
        self.data["rows"] = [r for r in self.data["rows"] if not all(r.get(k) == v for k, v in key.items())]

    def save(self) -> None:
        """Write the rows as they are now (after changing one in place)."""
        write_json(self.path, self.data)

    def add(self, row: dict) -> None:
        self.data["rows"].append(row if "command" in row else {**row, "command": command_line()})
        write_json(self.path, self.data)


def add_ray_args(p) -> None:
    """``--ray [--ray-address ADDRESS]``: run the benchmark's rows as Ray tasks (``distilset.jobs``)."""
    p.add_argument("--ray", action="store_true", help="run each row as a Ray task (one CPU, one thread)")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS", help="with --ray: the cluster, auto or HOST:PORT")


def ray_arg(args) -> bool | str | None:
    if args.ray_address and not args.ray:
        raise SystemExit("--ray-address needs --ray")
    return (args.ray_address or True) if args.ray else None


def rows_on_ray(fn, jobs: list[tuple], results: ResultFile, ray: bool | str | None) -> None:
    """``fn(*job)`` for each job, one row each, added to ``results`` as each finishes: in this process one after
    another, or as Ray tasks side by side (the benchmark scripts are sent to the workers by value, as they are
    not an installed package)."""
    if ray:
        import ray as ray_mod

        for name in {__name__, fn.__module__} - {"__main__"}:  # __main__ goes by value anyway
            ray_mod.cloudpickle.register_pickle_by_value(sys.modules[name])
    run_jobs(fn, jobs, ray=ray, on_done=lambda i, row: results.add(row))


def cli_flags(options: dict) -> str:
    """The ``distilset distill`` flags of a method's ``options``, each with a leading space (``net_kwargs`` as
    repeated ``--net-arg KEY=VALUE``): how a benchmark row writes down the command it stands for."""
    flags = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if k == "net_kwargs":
            flags += [f" --net-arg {shlex.quote(f'{key}={value}')}" for key, value in v.items()]
        elif isinstance(v, bool):  # the CLI's booleans are --flag / --no-flag
            flags.append(f" {flag}" if v else f" --no-{flag[2:]}")
        else:
            flags.append(f" {flag} {shlex.quote(str(v))}")
    return "".join(flags)


# The other nets of every benchmark's transfer column (LeNet, an MLP, ConvNet-3 with instance and with batch
# norm; the ConvNets at width 32 to fit the CPU).
TRANSFER_NETS = {"lenet": {}, "mlp": {}, "convnet": {"width": 32}, "convnet-bn": {"width": 32}}


def transfer(syn: SyntheticSet, data: Dataset, device: str = "cpu") -> dict:
    """DC's protocol on each net of ``TRANSFER_NETS`` other than the set's own (2 fresh nets each, seed 100):
    per-net results and the mean of their means (the papers' cross-architecture test); a net whose training
    fails or diverges is recorded with its error, and then there is no mean."""
    per_net = {}
    for net, kwargs in TRANSFER_NETS.items():
        if net == syn.net["name"]:
            continue
        try:
            r = evaluate(syn, data, net=net, net_kwargs=kwargs, protocol="standard", repeats=2, seed=100, device=device)
        except DistilsetError as e:
            per_net[net] = {"error": str(e)}
            continue
        per_net[net] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs, "net_kwargs": r.net_kwargs}
    scored = [v["mean"] for v in per_net.values() if "mean" in v]
    mean = sum(scored) / len(scored) if len(scored) == len(per_net) else None
    return (
        {"nets": per_net, "mean": mean, "std": 0.0, "recipe": "standard"}
        if mean is not None
        else {"nets": per_net, "error": "a transfer net failed"}
    )


class HeapPeak:
    """Peak bytes in use on the C heap (glibc ``mallinfo2``: arenas + mmapped blocks) inside a ``with`` block.

    A thread polls every 0.5 ms; torch releases the GIL in its kernels, so short peaks are seen. This counts
    tensor memory (CPU tensors live on the C heap) without the code pages and caches that RSS includes.
    """

    def __init__(self) -> None:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip

        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallinfo2.restype = MallInfo2

    def in_use(self) -> int:
        info = self._libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def __enter__(self) -> HeapPeak:
        import threading

        self.base = self.peak = self.in_use()
        self._stop = False

        def poll() -> None:
            while not self._stop:
                self.peak = max(self.peak, self.in_use())
                time.sleep(0.0005)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self.in_use())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20
