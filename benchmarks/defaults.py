"""Defaults matrix: every registered method x {digits, mnist5k, fashion-mnist} with default flags only.

    .venv/bin/python benchmarks/defaults.py                     # all rows (hours on 2 CPU cores; resumable)
    .venv/bin/python benchmarks/defaults.py --datasets digits   # one dataset
    .venv/bin/python benchmarks/defaults.py --table             # the README table
    .venv/bin/python benchmarks/defaults.py --html defaults.html  # the rows as a page

Each row runs the equivalent of ``distilset distill METHOD --dataset NAME --out DIR`` (no other option: the
method resolves its settings from the dataset; the row records them, the iteration budget and the wall time,
experts included for MTT), then scores the set and random real images of the same count (class-balanced,
seed 0) under the same evaluations:

- ``recipe``: the set's own training recipe (DD: the replay of its learned steps from its init; MTT: SGD with
  the learned lr and DSA, 1000 epochs; labels: Adam, the base batch, the estimated steps). Random real
  images get the same recipe and net (``distilset.random_real_like``): plain training and kernel regression as
  they are, the teacher recipe with the set's own teacher, and a replay of learned steps from the same init with
  each real image in the place of a synthetic one of its class.
- ``standard``: DC's protocol (SGD 0.01, momentum 0.9, 300 epochs, or 1000 with the set's DSA) on the set's net;
  a kernel set (KIP, LS) trains the finite net its kernel describes by KIP's finite-net recipe instead
  (``recipes.KIP_TRANSFER``: SGD with momentum, batch 100, 5000 steps, cosine, MSE).
- ``transfer``: the same protocol on each network of ``TRANSFER_NETS`` the set was not distilled with (LeNet, an
  MLP, ConvNet-3 with instance norm and with batch norm; the ConvNets at width 32 to fit the CPU), 2 fresh nets
  each; the row keeps each net's result and their mean (the papers' cross-architecture test). Labels rows add
  the same base images with one-hot labels on the same nets; sets saved at the real images' pixel statistics
  (``--pixel-stats real``) add their images as learned on the same nets (``transfer_as_learned``).
- ``adam``: the set's net trained with Adam (lr 1e-3, no weight decay), DC's epochs.
- ``scores``: DD-Ranking's LRS and ARS (``distilset.scores``, seed 100, the same repeats; the full-data run at
  most ``--full-steps`` steps, 5000 unless the row's ``scores.settings`` says otherwise, its accuracy cached as
  that module says), with the HLR and IOR they come from. Rows made before this column have none.

Rows go to ``benchmarks/results/defaults.json`` as they finish; a rerun skips finished rows (``--redo`` runs the
selected rows again and replaces them). ``--ray [--ray-address ADDRESS]`` runs each row as a Ray task (one CPU,
one thread: a row records its ``threads``), so a cluster works through the matrix side by side.

``--ablation`` runs each method with the setting a resolution rule replaced (DD on digits: LeNet and the decay
period counted in epochs of this dataset; MTT on digits: experts at batch 256; labels on digits: no
validation-based selection and a base batch of 50, or the ridge variant; labels on mnist5k and Fashion-MNIST:
the second-order variant; labels on mnist5k: the paper's uniform start, and labels learned with the MLP or
ConvNet-3 instead of LeNet, which tells whether their gain on the other nets is limited by the net that learned
them), scored the same way, into
``benchmarks/results/defaults-ablation.json``: the measured reason for each rule.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch
from _common import (
    RESULTS,
    TRANSFER_NETS,
    ResultFile,
    add_ray_args,
    cli_flags,
    command_line,
    ray_arg,
    rows_on_ray,
    transfer,
)

import distilset as ds
from distilset.io import write_text
from distilset.report import results_page
from distilset.scores import FULL_STEPS

WORK = Path("/tmp/distilset-defaults")
OUT = RESULTS / "defaults.json"
ABLATION = RESULTS / "defaults-ablation.json"
# (dataset, method, options, what the option undoes)
ABLATIONS = (
    ("digits", "dd", {"net": "lenet", "decay_epochs": 40.0}, "LeNet, decay every 40 epochs of this dataset"),
    ("digits", "mtt", {"expert_batch": 256}, "experts at MTT's batch of 256"),
    ("digits", "labels", {"validation": 0.0, "base_batch": 50}, "final labels (no validation), base batch 50"),
    ("digits", "labels", {"variant": "ridge"}, "the ridge variant"),
    ("mnist5k", "labels", {"variant": "second-order"}, "the second-order variant"),
    ("mnist5k", "labels", {"label_init": "uniform"}, "the paper's uniform start"),
    ("mnist5k", "labels", {"net": "mlp"}, "learned with the MLP"),
    ("mnist5k", "labels", {"net": "convnet", "net_kwargs": {"width": 32}}, "learned with ConvNet-3 width 32"),
    ("fashion-mnist", "labels", {"variant": "second-order"}, "the second-order variant"),
)


def score(syn: ds.SyntheticSet, data: ds.Dataset, repeats: int) -> dict:
    """Accuracy (mean, std, runs) of the set under each evaluation of the module docstring; an evaluation whose
    training diverges is recorded as such (``{"error": ...}``), not dropped."""
    own = {"net": syn.net["name"], "net_kwargs": syn.net["kwargs"]}
    fixed_replay = isinstance(syn.recipe, ds.Replay) and syn.recipe.init.startswith("fixed")
    evaluations = {
        "recipe": dict(repeats=1 if fixed_replay else repeats),
        "standard": dict(protocol="standard", repeats=repeats, **own),
        "adam": dict(protocol="standard", optimizer="adam", lr=1e-3, weight_decay=0.0, repeats=3, **own),
    }
    out = {}
    for key, options in evaluations.items():
        try:
            r = ds.evaluate(syn, data, seed=100, **options)
        except ds.DistilsetError as e:
            out[key] = {"error": str(e), "net": options.get("net", syn.net["name"])}
            continue
        out[key] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs, "recipe": r.recipe, "net": r.net}
    out["transfer"] = transfer(syn, data)
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    settings = {"repeats": args.repeats, "protocol": "default flags only; see benchmarks/defaults.py"}
    jobs = [(name, method, {}, "") for name in args.datasets for method in args.methods]
    path = OUT
    if args.ablation:
        jobs, path = [job for job in ABLATIONS if job[0] in args.datasets], ABLATION
    results = ResultFile(path, settings)
    todo = []
    for name, method, options, what in jobs:
        key = {"dataset": name, "method": method, **({"ablation": what} if what else {})}
        if results.has(key) and not args.redo:
            continue
        results.drop(key)
        todo.append((name, method, options, what, args.repeats, command_line(), args.full_steps))
    rows_on_ray(row, todo, results, ray_arg(args))


def row(
    name: str,
    method: str,
    options: dict,
    what: str,
    repeats: int,
    benchmark_command: str,
    full_steps: int = FULL_STEPS,
) -> dict:
    """One row of the matrix: distil with ``options`` only, then score the set and its random-real twin."""
    data = ds.load_dataset(name)
    key = {"dataset": name, "method": method, **({"ablation": what} if what else {})}
    out = WORK / f"{name}-{method}{'-ablation' if what else ''}"
    shutil.rmtree(out, ignore_errors=True)
    command = f"distilset distill {method} --dataset {name}{cli_flags(options)} --out {shlex.quote(str(out))}"
    print(f"== {command}", flush=True)
    t0 = time.perf_counter()
    syn = ds.distill(method, data, out=out, log=print, **options)
    distill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    distilled = score(syn, data, repeats)
    real = score(ds.random_real_like(syn, data), data, repeats)
    if method == "labels":  # the same base images with one-hot labels, by the same recipe
        classes = torch.tensor(syn.extra["base_classes"])
        twin = ds.SyntheticSet(syn.images, classes, syn.class_names, syn.norm, recipe=syn.recipe, net=syn.net)
        same = ds.evaluate(twin, data, repeats=repeats, seed=100)
        real["one_hot_same_images"] = {"mean": same.accuracy_mean, "std": same.accuracy_std, "runs": same.runs}
        real["one_hot_same_images_transfer"] = transfer(twin, data)
    if "learned_pixel_stats" in syn.extra:  # the images as learned, before the map to real statistics
        distilled["transfer_as_learned"] = transfer(syn.as_learned(), data)
    try:
        robust = ds.scores(syn, data, repeats=repeats, seed=100, full_steps=full_steps)
        robust_row = {"lrs": robust.lrs, "ars": robust.ars, "hlr": robust.hlr, "ior": robust.ior,
                      "full_hard": robust.accuracies["full-hard"]["mean"], "settings": robust.settings}  # fmt: skip
    except ds.DistilsetError as e:  # a run that diverges is recorded as such, the row kept
        robust, robust_row = f"scores failed: {e}", {"error": str(e)}
    d, r = distilled["recipe"], real["recipe"]
    print(f"{name} {method}: {_cell(d)} vs random real {_cell(r)} ({distill_s / 60:.1f} min); {robust}", flush=True)
    return {
        **key,
        "command": command,
        "benchmark_command": benchmark_command,
        "threads": torch.get_num_threads(),
        "images": len(syn),
        "iterations": syn.extra["iterations"],
        "config": syn.config,
        "resolved": syn.extra.get("resolved", {}),
        "distill_s": round(distill_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "distilled": distilled,
        "random_real": real,
        "scores": robust_row,
    }


def _cell(x: dict | None) -> str:
    if x is None:
        return "—"
    if x.get("other_recipe"):
        return "n/a (other recipe)"
    if "error" in x:
        return "diverged"
    return f"{100 * x['mean']:.1f}" if "nets" in x else f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f}"


def _like(mine: dict | None, real: dict | None) -> dict | None:
    """The random-real cell beside ``mine`` only when it is a run of the same recipe and net (rows made before the
    twins were like for like trained random real images of a replay set by DC's protocol: not shown)."""
    if not mine or not real or "recipe" not in mine or "recipe" not in real:
        return real
    same = mine["recipe"] == real["recipe"] and mine.get("net") == real.get("net")
    return real if same else {"other_recipe": True}


def _scores(r: dict) -> str:
    s = r.get("scores")
    if not s:
        return "–"
    if "error" in s:
        return "failed"
    ars = "n/a" if s["ars"] is None else f"{100 * s['ars']:.1f}"
    capped = "--full-steps" in r.get("benchmark_command", "")  # a budget below the default, named in the cell
    return f"{100 * s['lrs']:.1f} / {ars}" + (f" (full data: {s['settings']['full_steps']} steps)" if capped else "")


def _net_of(r: dict) -> str:
    """The distillation net of a row; kernel methods name their kernel instead, teacher-recipe sets (SRe2L, RDED)
    the student net their recipe trains with the teacher."""
    config = r["config"]
    if "net" in config:
        return config["net"]
    if "kernel" in config:
        return f"{config['kernel']} of {config.get('arch', 'fc')}"
    own = r["distilled"]["recipe"]
    return f"{own.get('net', '?')}, {own.get('recipe', {}).get('kind', '?')} recipe"


def table(path: Path = OUT) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    lines = [
        "| dataset | method | images | iterations | recipe: distilled / random real | DC protocol, own net | "
        "DC protocol, other nets (mean) | Adam, own net | LRS / ARS | distill time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(("digits", "mnist5k", "fashion-mnist"))}
    for r in sorted(data["rows"], key=lambda r: (order.get(r["dataset"], 9), r["method"])):
        d, real = r["distilled"], r["random_real"]
        pair = {
            k: f"{_cell(d.get(k))} / {_cell(_like(d.get(k), real.get(k)))}"
            for k in ("recipe", "standard", "transfer", "adam")
        }
        if "one_hot_same_images" in real:  # labels: the same base images with one-hot labels, same recipe
            pair["recipe"] += f" (one-hot: {_cell(real['one_hot_same_images'])})"
        if "one_hot_same_images_transfer" in real:
            pair["transfer"] += f" (one-hot: {_cell(real['one_hot_same_images_transfer'])})"
        if "transfer_as_learned" in d:  # the images before the map to the real pixel statistics
            pair["transfer"] += f" (as learned: {_cell(d['transfer_as_learned'])})"
        if "transfer" not in d and "other_net" in d:  # rows measured before the transfer column: one other net
            pair["transfer"] = f"{_cell(d['other_net'])} / {_cell(real['other_net'])} ({d['other_net']['net']} only)"
        lines.append(
            f"| {r['dataset']} | {r['method']} ({r.get('ablation') or _net_of(r)}) | {r['images']} | "
            f"{r['iterations']} | "
            f"{pair['recipe']} | {pair['standard']} | {pair['transfer']} | {pair['adam']} | {_scores(r)} | "
            f"{r['distill_s'] / 60:.1f} min{' (1 thread)' if r.get('threads') == 1 else ''} |"
        )
    lines.append(
        f"\nTest accuracy (%), mean ± std over fresh nets ({data['settings']['repeats']} for the recipe and DC "
        f"columns, 3 for Adam, 2 per transfer net; a fixed-init replay is deterministic: 1). Other nets: DC's "
        f"protocol (KIP's finite-net recipe for a kernel set, as in the DC column) on each of "
        f"{', '.join(TRANSFER_NETS)} but the set's own (ConvNets at width 32), mean of "
        f"their means (rows marked 'only' predate this column: one other net); 'one-hot:' is the same base "
        f"images with one-hot labels (same recipe, same nets), 'as learned:' a set's images before the map to the real "
        f"pixel statistics; LRS / ARS: DD-Ranking's label- and augmentation-robust scores in % (`distilset.scores`: "
        f"w = gamma = 0.5; ARS n/a for a replay or kernel-regression recipe, which has no augmentation to remove; "
        f"'–': a row made before the column; the full-data run behind them trains at most 5000 steps, fewer where "
        f"the cell says so); "
        f"{m['cores']} CPU cores, torch "
        f"{m['torch']}, 2 threads unless a row is marked '1 thread' (a Ray task each, two side by side, or "
        f"`--threads 1` beside another job), "
        f"file last written {m['date']} (rows run on several days up to then). Commands: the `command` of each row in "
        f"`benchmarks/results/{path.name}`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k", "fashion-mnist"])
    p.add_argument("--methods", nargs="+", default=ds.list_methods())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--full-steps",
        type=int,
        default=FULL_STEPS,
        help="most minibatch steps of the scores' full-data run (recorded in the row's scores settings)",
    )
    p.add_argument("--redo", action="store_true", help="run the selected rows again, replacing their results")
    p.add_argument("--ablation", action="store_true", help="the digits rows with an earlier default each")
    p.add_argument("--table", action="store_true", help="print the markdown table and exit")
    p.add_argument("--html", metavar="PATH", help="write the results as an HTML page (distilset report's style)")
    add_ray_args(p)
    args = p.parse_args()
    if min(args.repeats, args.threads, args.full_steps) < 1:  # before any row runs, not after an hour of one
        p.error("--repeats, --threads and --full-steps are counts >= 1")
    if args.html:
        write_text(args.html, results_page(ABLATION if args.ablation else OUT))
    elif args.table:
        print(table(ABLATION if args.ablation else OUT))
    else:
        run(args)
