"""Matching methods (DC, DSA, DM) beside random real images, and accuracy per minute of every method, on this CPU.

    .venv/bin/python benchmarks/matching.py            # all rows (about 1.5 h on 2 cores; resumable)
    .venv/bin/python benchmarks/matching.py --table    # the README tables

Budget (the papers' settings do not fit a 2-core CPU: DC at 1 image per class with ConvNet-3 width 128 takes
7.8 s per iteration on mnist5k here, 2.2 h for its 1000 iterations): the distillation net is ConvNet-3 of width
32 (the papers: 128), DC and DSA run 200 of their 1000 iterations, DM 300 of its 20,000; at 10 images per class
DC and DSA start from real images and run 8 iterations (35 s each here: 10 matchings and 450 inner epochs).
Every other setting is the method's default. The rows record the exact ``distilset distill`` command.

Each set, and random real images of the same count (class-balanced, seed 0), is scored by fresh networks
trained with DC's protocol (SGD 0.01, momentum 0.9, weight decay 5e-4, 300 epochs, lr x0.1 at half) on:
- ``convnet``: ConvNet-3 width 32, instance norm, no augmentation: the one evaluator every row shares;
- ``convnet_dsa``: the same with per-image DSA (the dataset's strategy), DSA and DM's own protocol at 300 of its
  1000 epochs;
- ``lenet``: LeNet (a network none of these sets was distilled with), no augmentation;
- ``convnet_bn``: ConvNet-3 width 32 with batch norm, no augmentation;
- ``mlp``: the MLP (2 hidden layers), no augmentation;
- transfer: the mean over LeNet, the MLP and ConvNet-3 BN, the nets none of the sets was distilled with;
- ``recipe``: the set's own recipe when it is not one of the above (DD's learned replay, label distillation's
  retraining).

The accuracy-per-minute table takes the Fashion-MNIST rows with 100 images (10 per class): DM, DC, DSA, and DD and
label distillation with their default flags (both make 100 images by default: DD 10 steps x 1 image per class,
label distillation 100 base images) at a budget that fits, all under the shared ``convnet`` evaluator.
Rows go to ``benchmarks/results/matching.json`` as they finish; a rerun skips finished rows. ``--rescore`` scores
the saved sets of the 1-image-per-class rows again under every column (the sets as the current code saves them:
DC, DSA and DM at the real images' pixel statistics, a map applied after the distillation, which it does not
change) and records when.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile, cli_flags, command_line, machine

import distilset as ds

WORK = Path("/tmp/distilset-matching")
OUT = RESULTS / "matching.json"
SMALL = {"net_kwargs": {"width": 32}}
# (dataset, method, iterations, options), most wanted first
ROWS = (
    ("fashion-mnist", "random", 0, {"ipc": 1}),
    ("fashion-mnist", "dc", 200, {"ipc": 1, **SMALL}),
    ("fashion-mnist", "dsa", 200, {"ipc": 1, **SMALL}),
    ("fashion-mnist", "dm", 300, {"ipc": 1, **SMALL}),
    ("fashion-mnist", "random", 0, {"ipc": 10}),
    ("fashion-mnist", "dm", 300, {"ipc": 10, **SMALL}),
    ("fashion-mnist", "labels", 1000, {}),
    ("fashion-mnist", "dd", 400, {}),
    ("fashion-mnist", "dsa", 8, {"ipc": 10, "init": "real", **SMALL}),
    ("fashion-mnist", "dc", 8, {"ipc": 10, "init": "real", **SMALL}),
    ("mnist5k", "random", 0, {"ipc": 1}),
    ("mnist5k", "dc", 200, {"ipc": 1, **SMALL}),
    ("mnist5k", "dsa", 200, {"ipc": 1, **SMALL}),
    ("mnist5k", "dm", 300, {"ipc": 1, **SMALL}),
)
PUBLISHED = {  # ConvNet-3 width 128 on the full MNIST / Fashion-MNIST, IPC 1 / 10 / 50: the DC/DSA authors' README
    ("mnist5k", "dc"): (91.7, 97.4, 98.8),  # tables. DM is not quoted: no figure for these sets was confirmed.
    ("mnist5k", "dsa"): (88.7, 97.8, 99.2),
    ("fashion-mnist", "dc"): (70.5, 82.3, 83.6),
    ("fashion-mnist", "dsa"): (70.6, 84.6, 88.7),
}


def evaluations(syn: ds.SyntheticSet, data: ds.Dataset, method: str) -> dict[str, dict]:
    """The columns of the module docstring that apply to this set."""
    common = dict(protocol="standard", dsa=None, epochs=300, net="convnet", net_kwargs={"width": 32})
    out = {"convnet": common, "lenet": {**common, "net": "lenet", "net_kwargs": {}}}
    small = len(syn) <= data.num_classes
    if small or method in ("dsa", "dm", "random"):
        out["convnet_dsa"] = {**common, "dsa": data.info.dsa_strategy}
    out["convnet_bn"] = {**common, "net_kwargs": {"width": 32, "norm": "batch"}}
    out["mlp"] = {**common, "net": "mlp", "net_kwargs": {}}
    if method in ("dd", "labels"):
        out["recipe"] = {}
    return out


def score(syn: ds.SyntheticSet, data: ds.Dataset, method: str, repeats: int) -> dict:
    out = {}
    for key, options in evaluations(syn, data, method).items():
        t0 = time.perf_counter()
        try:
            r = ds.evaluate(syn, data, seed=100, repeats=repeats, **options)
        except ds.DistilsetError as e:
            out[key] = {"error": str(e)}
            continue
        out[key] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs, "net": r.net,
                    "recipe": r.recipe, "eval_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(f"   {key}: {100 * r.accuracy_mean:.1f}", flush=True)
    return out


TRANSFER = ("lenet", "mlp", "convnet_bn")


def transfer(scores: dict) -> dict | None:
    """The mean over the transfer nets, when all of them were scored."""
    if not all(k in scores and "mean" in scores[k] for k in TRANSFER):
        return None
    return {"mean": sum(scores[k]["mean"] for k in TRANSFER) / len(TRANSFER), "std": None}


def rescore(args: argparse.Namespace) -> None:
    """Score the saved sets of the 1-image-per-class rows again under every column (module docstring)."""
    torch.set_num_threads(args.threads)
    results = ResultFile(OUT, {"repeats": args.repeats, "protocol": "see benchmarks/matching.py"})
    for row in results.data["rows"]:
        data = ds.load_dataset(row["dataset"])
        if row["images"] > data.num_classes or (args.datasets and row["dataset"] not in args.datasets):
            continue
        if row["method"] == "random":
            syn = ds.baseline("random", data, ipc=row["options"]["ipc"], seed=0)
        else:
            syn = ds.SyntheticSet.load(shlex.split(row["command"])[-1])
            config = ds.get_method(row["method"]).config.from_json(syn.config)
            maps = hasattr(config, "fill_pixel_stats") and config.fill_pixel_stats(data)[0].pixel_stats == "real"
            if "learned_pixel_stats" not in syn.extra and maps:
                syn = syn.with_pixel_stats_of(data.train_x)
        print(f"== rescore {row['dataset']} {row['method']} {row['options']}", flush=True)
        if "learned_pixel_stats" in syn.extra and "scores_as_learned" not in row:
            row["scores_as_learned"] = row["scores"]  # the earlier scores, of the images as learned
        row["scores"] = score(syn, data, row["method"], args.repeats)
        row["rescored"] = {"command": command_line(), "date": machine()["date"],
                           "pixel_stats": "learned_pixel_stats" in syn.extra}  # fmt: skip
        results.save()


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    settings = {"repeats": args.repeats, "protocol": "see benchmarks/matching.py"}
    results = ResultFile(OUT, settings)
    for name, method, iterations, options in ROWS:
        if args.datasets and name not in args.datasets:
            continue
        key = {"dataset": name, "method": method, "options": options}
        if results.has(key):
            continue
        data = ds.load_dataset(name)
        out = WORK / f"{name}-{method}-{len(options)}-{options.get('ipc', '')}"
        t0 = time.perf_counter()
        if method == "random":
            syn = ds.baseline("random", data, ipc=options["ipc"], seed=0)
            command = f"distilset baseline random --dataset {name} --ipc {options['ipc']} --seed 0"
        else:
            shutil.rmtree(out, ignore_errors=True)
            command = (f"distilset distill {method} --dataset {name} --iterations {iterations}{cli_flags(options)} "
                       f"--out {shlex.quote(str(out))}")  # fmt: skip
            print(f"== {command}", flush=True)
            syn = ds.distill(method, data, iterations=iterations, out=out, **options)
        distill_s = time.perf_counter() - t0
        row = {**key, "command": command, "iterations": iterations, "images": len(syn),
               "config": syn.config, "distill_s": round(distill_s, 1)}  # fmt: skip
        print(f"{name} {method} {options}: {distill_s / 60:.1f} min", flush=True)
        row["scores"] = score(syn, data, method, args.repeats)
        results.add(row)


def _cell(x: dict | None) -> str:
    if x is None:
        return "—"
    if "error" in x:
        return "diverged"
    return f"{100 * x['mean']:.1f}" if x["std"] is None else f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f}"


def _label(r: dict) -> str:
    o = r["options"]
    extra = ", real init" if o.get("init") == "real" else ""
    return f"{r['method']}{extra}"


def table() -> str:
    data = json.loads(OUT.read_text())
    rows, m = data["rows"], data["machine"]
    random = {(r["dataset"], r["images"]): r for r in rows if r["method"] == "random"}
    lines = [
        "| dataset | images | method | iterations | ConvNet-3 (shared evaluator) | with DSA | LeNet | "
        "ConvNet-3 BN | MLP | transfer (mean of 3) | published (ConvNet-3 w128) | distill time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] in ("dd", "labels"):
            continue
        s = r["scores"]
        ipc = r["images"] // 10
        pub = PUBLISHED.get((r["dataset"], r["method"]), (None,) * 3)[{1: 0, 10: 1, 50: 2}.get(ipc, 0)]
        lines.append(
            f"| {r['dataset']} | {r['images']} | {_label(r)} | {r['iterations'] or '—'} | {_cell(s['convnet'])} | "
            f"{_cell(s.get('convnet_dsa'))} | {_cell(s['lenet'])} | {_cell(s.get('convnet_bn'))} | "
            f"{_cell(s.get('mlp'))} | {_cell(transfer(s))} | "
            f"{pub if pub is not None and r['method'] != 'random' else '—'} | "
            f"{r['distill_s'] / 60:.1f} min |"
        )
    lines.append(
        f"\nTest accuracy (%), mean ± std over {data['settings']['repeats']} fresh nets, DC's protocol (300 epochs); "
        f"{m['cores']} CPU cores, torch {m['torch']}, {m['date']}. Commands: the `command` of each row in "
        "`benchmarks/results/matching.json`."
    )
    per_minute = [r for r in rows if r["dataset"] == "fashion-mnist" and r["images"] == 100]
    base = random.get(("fashion-mnist", 100))
    lines += [
        "",
        "| method (Fashion-MNIST, 100 images) | iterations | distill time | ConvNet-3 (shared evaluator) | "
        "gain over random real | gain per minute | own recipe |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(per_minute, key=lambda r: -r["scores"]["convnet"]["mean"]):
        acc = r["scores"]["convnet"]["mean"]
        gain = 100 * (acc - base["scores"]["convnet"]["mean"]) if base else float("nan")
        minutes = r["distill_s"] / 60
        rate = f"{gain / minutes:+.2f} pt/min" if r["method"] != "random" else "—"
        lines.append(
            f"| {_label(r)} | {r['iterations'] or '—'} | {minutes:.1f} min | {_cell(r['scores']['convnet'])} | "
            f"{gain:+.1f} | {rate} | {_cell(r['scores'].get('recipe'))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the markdown tables and exit")
    p.add_argument("--rescore", action="store_true", help="score the 1-image-per-class rows' saved sets again")
    args = p.parse_args()
    print(table()) if args.table else rescore(args) if args.rescore else run(args)
