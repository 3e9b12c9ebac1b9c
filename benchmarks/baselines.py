"""Baselines benchmark: random / mean / k-means / herding on digits, mnist5k and fashion-mnist at IPC 1/10/50.

Every set is scored by the standard protocol (SGD 0.9, wd 5e-4, lr 0.01, batch 256, lr x0.1 at half, no
augmentation: ``ds.evaluate(..., protocol="standard", dsa=None)``) with a CPU-sized ConvNet-3 (width 32 instead
of 128) and final test accuracy over 3 nets. Rows are appended to benchmarks/results/baselines.json as they
finish (each with its command line); rerunning resumes. ``--results DIR`` writes (and reads tables) elsewhere.

    .venv/bin/python benchmarks/baselines.py            # full run (about an hour on 2 CPU cores)
    .venv/bin/python benchmarks/baselines.py --gap      # random real at IPC 10: width 128, other subsets
    .venv/bin/python benchmarks/baselines.py --table    # print the markdown table from the JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile

import distilset as ds

PAPER_RANDOM = {  # DC paper (Zhao, Mopuri & Bilen, ICLR 2021), ConvNet-3 width 128
    ("mnist5k", 1): 64.9, ("mnist5k", 10): 95.1, ("mnist5k", 50): 97.9,
    ("fashion-mnist", 1): 51.4, ("fashion-mnist", 10): 73.8, ("fashion-mnist", 50): 82.5,
}  # fmt: skip
PAPER_HERDING = {
    ("mnist5k", 1): 89.2, ("mnist5k", 10): 93.7, ("mnist5k", 50): 94.8,
    ("fashion-mnist", 1): 67.0, ("fashion-mnist", 10): 71.1, ("fashion-mnist", 50): 71.9,
}  # fmt: skip


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    settings = {"net": "convnet", "width": args.width, "epochs": args.epochs, "repeats": args.repeats,
                "protocol": "standard", "dsa": None}  # fmt: skip
    results = ResultFile(args.results / "baselines.json", settings)
    for ipc in args.ipcs:
        for name in args.datasets:
            data = ds.load_dataset(name)
            for method in args.methods:
                key = {"dataset": name, "ipc": ipc, "method": method}
                if results.has(key):
                    continue
                t0 = time.perf_counter()
                syn = ds.baseline(method, data, ipc=ipc, seed=0)
                build = time.perf_counter() - t0
                res = ds.evaluate(syn, data, net="convnet", net_kwargs={"width": args.width}, protocol="standard",
                                  repeats=args.repeats, epochs=args.epochs, dsa=None)  # fmt: skip
                row = {**key, "images": len(syn), "accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std,
                       "runs": res.runs, "build_s": round(build, 2), "eval_s": round(res.wall_time_s, 1)}  # fmt: skip
                results.add(row)
                print(f"{name:>14} ipc {ipc:>2} {method:>8}: {100 * res.accuracy_mean:5.1f} ± "
                      f"{100 * res.accuracy_std:.1f} %  ({res.wall_time_s:.0f} s)", flush=True)  # fmt: skip


def gap(args: argparse.Namespace) -> None:
    """Where the random-real rows differ from the DC paper: net width (128 vs 32) and the draw of the subset."""
    torch.set_num_threads(args.threads)
    settings = {"ipc": 10, "epochs": args.epochs, "repeats": args.repeats}
    results = ResultFile(args.results / "baselines-gap.json", settings)
    for name in ("mnist5k", "fashion-mnist"):
        data = ds.load_dataset(name)
        for width, seed in ((128, 0), (32, 1), (32, 2)):
            key = {"dataset": name, "width": width, "subset_seed": seed}
            if results.has(key):
                continue
            syn = ds.baseline("random", data, ipc=10, seed=seed)
            res = ds.evaluate(syn, data, net="convnet", net_kwargs={"width": width}, protocol="standard",
                              repeats=args.repeats, epochs=args.epochs, dsa=None)  # fmt: skip
            results.add({**key, "accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std,
                         "runs": res.runs, "eval_s": round(res.wall_time_s, 1)})  # fmt: skip
            print(f"{name} width {width} subset {seed}: {100 * res.accuracy_mean:.1f} ± {100 * res.accuracy_std:.1f}")


def gap_table(results: Path = RESULTS) -> str:
    path = results / "baselines-gap.json"
    if not path.exists():
        return ""
    rows = json.loads(path.read_text())["rows"]
    lines = ["\n\n| dataset (random real, IPC 10) | ConvNet width | subset seed | accuracy (%) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['width']} | {r['subset_seed']} | "
                     f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def table(results: Path = RESULTS) -> str:
    data = json.loads((results / "baselines.json").read_text())
    rows = {(r["dataset"], r["ipc"], r["method"]): r for r in data["rows"]}
    datasets = [d for d in ("digits", "mnist5k", "fashion-mnist") if any(k[0] == d for k in rows)]
    lines = ["| dataset | method | IPC 1 | IPC 10 | IPC 50 |", "|---|---|---|---|---|"]
    for d in datasets:
        for m in ("random", "mean", "kmeans", "herding"):
            cells = []
            for ipc in (1, 10, 50):
                r = rows.get((d, ipc, m))
                cells.append(f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}" if r else "-")
            lines.append(f"| {d} | {m} | " + " | ".join(cells) + " |")
        full = "full MNIST, " if d == "mnist5k" else ""
        for label, paper in ((f"random ({full}DC paper)", PAPER_RANDOM), (f"herding ({full}DC paper)", PAPER_HERDING)):
            if any((d, i) in paper for i in (1, 10, 50)):
                cells = [f"{paper[(d, i)]:.1f}" if (d, i) in paper else "-" for i in (1, 10, 50)]
                lines.append(f"| {d} | {label} | " + " | ".join(cells) + " |")
    s = data["settings"]
    m = data["machine"]
    lines.append(
        f"\nConvNet-3 width {s['width']}, standard protocol, {s['epochs']} epochs, no augmentation, final test "
        f"accuracy mean ± std over {s['repeats']} nets; {m['cores']} CPU cores, torch {m['torch']}, "
        f"{m['torch_threads']} thread(s), {m['date']}. Total evaluation time "
        f"{sum(r['eval_s'] for r in data['rows']) / 60:.0f} min."
    )
    return "\n".join(lines) + gap_table(results)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k", "fashion-mnist"])
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--methods", nargs="+", default=["random", "mean", "kmeans", "herding"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the markdown table and exit")
    p.add_argument("--gap", action="store_true", help="random real at IPC 10: width 128 and other subsets")
    p.add_argument("--results", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    args = p.parse_args()
    if args.table:
        print(table(args.results))
    elif args.gap:
        gap(args)
    else:
        run(args)
