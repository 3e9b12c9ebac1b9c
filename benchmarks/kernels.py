"""Kernel methods (LS, KIP, FRePo) beside random real images, and the speed of the kernels, on this CPU.

    .venv/bin/python benchmarks/kernels.py            # all rows (about 30 min on 2 cores; resumable)
    .venv/bin/python benchmarks/kernels.py --table    # the README tables

Rows (``benchmarks/results/kernels.json``), for digits, mnist5k and Fashion-MNIST at 1 and 10 images per class:
- ``random`` real images, ``ls`` (Label Solve) and ``kip`` (300 iterations, target batch 1000) with the default
  kernel (NTK of a one-hidden-layer fully connected net), scored by kernel ridge regression with that kernel
  (``krr``) and by finite ConvNets (3 layers, width 32, no normalisation) trained on the set by DC's protocol with
  MSE on the set's targets (``finite``, one-hot targets for random real);
- on digits also LS with the infinitely wide ConvNet kernels (``conv``: no pooling; ``convnet``: pooled), which
  this CPU allows at 8x8 only (28x28 costs are in the speed rows);
- ``frepo`` (FRePo with default flags but 100 iterations, and a width-32 ConvNet on 28x28 inputs), scored by
  FRePo's evaluation recipe shortened to 500 steps (100 warm-up), beside random real under the same recipe.
Speed rows: kernel entries (pairs of inputs) per second for each architecture at 8x8 and 28x28, in blocks, and
by a direct loop over single pairs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, ResultFile

import distilset as ds
from distilset.kernels import architecture
from distilset.recipes import KernelRidge

OUT = RESULTS / "kernels.json"
FINITE = {"protocol": "standard", "net": "convnet", "net_kwargs": {"width": 32, "norm": "none"}, "loss": "mse"}
PUBLISHED_LS = {"mnist5k": {1: 73.4, 10: 96.4}, "fashion-mnist": {1: 65.3, 10: 80.8}}
"""LS with the infinitely wide ConvNet kernel, support 10 / 100, on the full MNIST / Fashion-MNIST, as reported
from KIP's released notebooks (not re-checked here)."""


def _score(syn: ds.SyntheticSet, data: ds.Dataset, repeats: int, finite: bool = True) -> dict:
    out = {}
    t0 = time.perf_counter()
    r = ds.evaluate(syn, data)
    out["krr"] = {"mean": r.accuracy_mean, "eval_s": round(time.perf_counter() - t0, 1), "kernel": r.recipe}
    if finite:
        r = ds.evaluate(syn, data, repeats=repeats, seed=100, **FINITE)
        out["finite"] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs}
    return out


def kernel_rows(results: ResultFile, name: str, repeats: int) -> None:
    data = ds.load_dataset(name)
    for ipc in (1, 10):
        jobs = [("random", {}), ("ls", {}), ("kip", {"iterations": 300})]
        if name == "digits":
            jobs += [("ls", {"arch": "conv"}), ("ls", {"arch": "convnet"})]
        for method, options in jobs:
            key = {"part": "kernel", "dataset": name, "ipc": ipc, "method": method, "options": options}
            if results.has(key):
                continue
            opts = {k: v for k, v in options.items() if k != "iterations"}
            t0 = time.perf_counter()
            if method == "random":
                syn = ds.baseline("random", data, ipc=ipc, seed=0)
                syn.recipe = KernelRidge(arch="fc", depth=1)  # the default kernel's regression
                syn.net = {"name": "convnet", "kwargs": {"norm": "none"}, "init": "default"}
            else:
                syn = ds.distill(method, data, ipc=ipc, iterations=options.get("iterations"), **opts)
            distill_s = time.perf_counter() - t0
            row = {**key, "distill_s": round(distill_s, 1), "config": syn.config,
                   **_score(syn, data, repeats, finite=method != "ls" or "arch" not in options)}  # fmt: skip
            results.add(row)
            print(json.dumps({k: row[k] for k in ("dataset", "ipc", "method", "options")}), row["krr"]["mean"],
                  row.get("finite", {}).get("mean"), flush=True)  # fmt: skip


def frepo_rows(results: ResultFile, name: str, repeats: int) -> None:
    data = ds.load_dataset(name)
    options = {} if name == "digits" else {"net_kwargs": {"norm": "none", "width": 32}}
    for ipc in (1, 10):
        key = {"part": "frepo", "dataset": name, "ipc": ipc, "options": options}
        if results.has(key):
            continue
        t0 = time.perf_counter()
        syn = ds.distill("frepo", data, ipc=ipc, iterations=100, **options)
        distill_s = time.perf_counter() - t0
        real = ds.baseline("random", data, ipc=ipc, seed=0)
        real.recipe, real.net = syn.recipe, syn.net
        short = {"steps": 500, "warmup": 100}
        a = ds.evaluate(syn, data, repeats=repeats, seed=100, **short)
        b = ds.evaluate(real, data, repeats=repeats, seed=100, **short)
        results.add({**key, "iterations": 100, "distill_s": round(distill_s, 1), "s_per_iteration": distill_s / 100,
                     "frepo": {"mean": a.accuracy_mean, "std": a.accuracy_std, "runs": a.runs},
                     "random_real": {"mean": b.accuracy_mean, "std": b.accuracy_std, "runs": b.runs},
                     "recipe": a.recipe})  # fmt: skip
        print(name, ipc, "frepo", a.accuracy_mean, "random", b.accuracy_mean, flush=True)


def speed_rows(results: ResultFile) -> None:
    for name in ("digits", "mnist5k"):
        x = ds.load_dataset(name).train_x[:64].double()
        for arch in ("fc", "conv", "convnet"):
            key = {"part": "speed", "dataset": name, "arch": arch}
            if results.has(key):
                continue
            net = architecture(arch, 2 if name == "digits" else 3)
            n = {"fc": 64, "conv": 32, "convnet": 16 if name == "digits" else 2}[arch]
            t0 = time.perf_counter()
            net.kernel(x[:n], x[:n])
            blocked = n * n / (time.perf_counter() - t0)
            pairs = min(n, 8)
            t0 = time.perf_counter()
            for i in range(pairs):
                net.kernel(x[i : i + 1], x[(i + 1) % n : (i + 1) % n + 1])
            looped = pairs / (time.perf_counter() - t0)
            results.add({**key, "entries_per_s_blocked": blocked, "entries_per_s_loop": looped, "block": n})
            print(name, arch, f"{blocked:.0f} entries/s blocked, {looped:.0f} by single pairs", flush=True)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    results = ResultFile(OUT, {"repeats": args.repeats, "protocol": "see benchmarks/kernels.py"})
    for name in args.datasets:
        kernel_rows(results, name, args.repeats)
    for name in args.datasets:
        frepo_rows(results, name, args.repeats)
    speed_rows(results)  # last: on a machine that has gone quiet


def _pct(x: dict | None) -> str:
    if not x:
        return "—"
    return f"{100 * x['mean']:.1f}" + (f" ± {100 * x['std']:.1f}" if "std" in x else "")


def table() -> str:
    data = json.loads(OUT.read_text())
    rows, m = data["rows"], data["machine"]
    lines = ["| dataset | images | method | kernel regression | finite ConvNet (MSE) | LS published (ConvNet "
             "kernel) | time |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in (r for r in rows if r["part"] == "kernel"):
        arch = r["options"].get("arch", "fc")
        label = r["method"] + (f" ({arch} kernel)" if arch != "fc" else "")
        if r["method"] == "kip":
            label += f", {r['options']['iterations']} it"
        pub = PUBLISHED_LS.get(r["dataset"], {}).get(r["ipc"]) if r["method"] == "ls" else None
        lines.append(f"| {r['dataset']} | {10 * r['ipc']} | {label} | {_pct(r['krr'])} | {_pct(r.get('finite'))} | "
                     f"{pub or '—'} | {r['distill_s']:.0f} s |")  # fmt: skip
    lines += ["", "| dataset | images | FRePo (100 it) | random real, same recipe | s / iteration |",
              "|---|---|---|---|---|"]  # fmt: skip
    for r in (r for r in rows if r["part"] == "frepo"):
        lines.append(f"| {r['dataset']} | {10 * r['ipc']} | {_pct(r['frepo'])} | {_pct(r['random_real'])} | "
                     f"{r['s_per_iteration']:.2f} |")  # fmt: skip
    lines += ["", "| input | kernel | entries / s, blocked | entries / s, one pair at a time |", "|---|---|---|---|"]
    for r in (r for r in rows if r["part"] == "speed"):
        size = "8x8" if r["dataset"] == "digits" else "28x28"
        lines.append(f"| {size} | {r['arch']} | {r['entries_per_s_blocked']:.0f} | {r['entries_per_s_loop']:.1f} |")
    lines.append(f"\nTest accuracy (%); {m['cores']} CPU cores, torch {m['torch']}, {m['date']}; finite nets and "
                 f"FRePo: mean ± std over {data['settings']['repeats']} nets. Commands: benchmarks/kernels.py "
                 "(each row's `command`).")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k", "fashion-mnist"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    print(table()) if args.table else run(args)
