"""Which networks gain from learned labels? Gains over one-hot labels of the same 100 base images, per net.

    .venv/bin/python benchmarks/label_gains.py            # the teacher rows (about 20 min on 2 CPU cores)
    .venv/bin/python benchmarks/label_gains.py --trajectory   # labels along one default run (about 11 min)
    .venv/bin/python benchmarks/label_gains.py --table    # the README tables

Label distillation (Bohdal et al. 2020) claims labels that help networks and optimisers they were not learned
with. On mnist5k (100 base examples) the defaults matrix finds labels learned with LeNet far ahead of one-hot
labels on LeNet and less so on the other nets. This script separates the two things that could cause that: the
net that learned the labels, and the net that is trained on them.

- Learned rows come from the defaults matrix (``defaults.py``: labels learned with LeNet, the default) and its
  ablation (``defaults.py --ablation``: the same command with ``--net mlp`` and with ``--net convnet --net-arg
  width=32``). Every row has the same base images (the method picks them with its seed, whatever the net).
- Teacher rows (run here) are a reference for what labels alone can give: ConvNet-3 (width 32) trained with Adam
  on all training images labels the same base images with ``softmax(logits / T)`` (knowledge distillation's
  soft targets, Hinton et al. 2015).
- The one-hot row (run here) is the base images with their classes: the reference of every gain.
- Trajectory rows (``--trajectory``) follow one run with default flags (LeNet) and score its labels as they were
  at a few iterations on every net, beside the validation accuracy the method's model selection saw there: does
  transfer fall as the labels move away from one-hot, and which labels does the selection keep?

Every cell is DC's protocol (SGD 0.01, momentum 0.9, 300 epochs, ConvNets at width 32) with fresh nets from seed
100: 2 per net, except a learned row on its own net (the matrix's "DC protocol, own net" column: 5).
Rows go to ``benchmarks/results/label-gains.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, TRANSFER_NETS, ResultFile, command_line

import distilset as ds
from distilset.methods.base import Context
from distilset.methods.labels import LabelConfig, LabelDistillation, select_base, split_validation
from distilset.nets import create_net
from distilset.recipes import Standard
from distilset.train import accuracy, fit

OUT = RESULTS / "label-gains.json"
TEACHER = Standard(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=15, batch_size=128)
NAMES = {"lenet": "LeNet", "mlp": "MLP", "convnet": "ConvNet-3", "convnet-bn": "ConvNet-3 BN"}


def base_images(data: ds.Dataset, base: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The base images and classes label distillation picks with its defaults (validation share held out)."""
    target, _, _ = split_validation(data, LabelConfig.validation, seed)
    return select_base(target, base, None, seed)


def teacher_labels(data: ds.Dataset, images: torch.Tensor, temperatures: list[float]) -> tuple[dict, float]:
    """Soft labels of ``images`` by a ConvNet-3 (width 32) trained on all of ``data``'s training images."""
    net = create_net("convnet", data.image_shape, data.num_classes, seed=0, width=32)
    fit(net, data.train_x, data.train_y, TEACHER, seed=0)
    net.eval()
    with torch.no_grad():
        logits = net(images)
    return {t: torch.softmax(logits / t, 1) for t in temperatures}, accuracy(net, data.test_x, data.test_y)


def per_net(syn: ds.SyntheticSet, data: ds.Dataset, repeats: int) -> dict:
    """DC's protocol on each net of the transfer list: mean, std and runs per net."""
    out = {}
    for net, kwargs in TRANSFER_NETS.items():
        r = ds.evaluate(syn, data, net=net, net_kwargs=kwargs, protocol="standard", repeats=repeats, seed=100)
        out[net] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs}
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = ds.load_dataset(args.dataset)
    results = ResultFile(OUT, {"repeats": args.repeats, "teacher": "convnet width 32, " + repr(TEACHER)})
    images, classes = base_images(data, args.base)
    t0 = time.perf_counter()
    labels, teacher_acc = teacher_labels(data, images, args.temperatures)
    print(f"teacher: {100 * teacher_acc:.1f} % test ({time.perf_counter() - t0:.0f} s)", flush=True)
    sets = {"one-hot": classes, **{f"teacher T={t:g}": y for t, y in labels.items()}}
    for name, y in sets.items():
        key = {"dataset": args.dataset, "base": args.base, "labels": name}
        if results.has(key):
            continue
        t0 = time.perf_counter()
        nets = per_net(ds.SyntheticSet(images, y, data.info.class_names, data.info.norm), data, args.repeats)
        print(name, {n: round(100 * v["mean"], 1) for n, v in nets.items()}, flush=True)
        top = y.max(1).values.mean().item() if y.ndim == 2 else 1.0
        results.add({**key, "command": command_line(), "threads": torch.get_num_threads(),
                     "teacher_test_acc": teacher_acc, "mean_top_label": top, "nets": nets,
                     "eval_s": round(time.perf_counter() - t0, 1)})  # fmt: skip


def trajectory(args: argparse.Namespace) -> None:
    """Score the labels of one default run (LeNet, model selection on) at ``args.at`` iterations on every net."""
    torch.set_num_threads(args.threads)
    data = ds.load_dataset(args.dataset)
    results = ResultFile(OUT, {"repeats": args.repeats, "teacher": "convnet width 32, " + repr(TEACHER)})
    distiller = LabelDistillation(data, LabelConfig(base=args.base), Context(seed=0))
    if not torch.equal(distiller.base_x, base_images(data, args.base)[0]):
        raise SystemExit("the run's base images differ from the other rows': the rows would not compare")
    net, every, total = distiller.cfg.net, distiller.cfg.val_every, max(args.at)
    if total > distiller.cfg.default_iterations(data):
        raise SystemExit(f"--at: at most the default budget ({distiller.cfg.default_iterations(data)} iterations)")
    if any(it % every for it in args.at):
        raise SystemExit(f"--at: every iteration must be a multiple of the validation interval ({every})")
    keys = {it: {"dataset": args.dataset, "base": args.base, "labels": f"{NAMES[net]} run, iteration {it}"}
            for it in args.at}  # fmt: skip
    if all(results.has(key) for key in keys.values()):
        return
    snapshots, checks, t0 = {}, [], time.perf_counter()
    for i in range(total):
        metrics = distiller.step(i)
        if "val_acc" in metrics:
            checks.append({"iteration": i + 1, "val_acc": metrics["val_acc"]})
        if i + 1 in args.at:
            snapshots[i + 1] = (distiller.labels.detach().clone(), metrics["val_acc"])
    distill_s = time.perf_counter() - t0
    selected = distiller.synthetic_set().extra
    print(f"distilled {total} iterations in {distill_s:.0f} s; selection keeps iteration "
          f"{selected['chosen_iteration']} (val {100 * selected['val_acc']:.1f} %)", flush=True)  # fmt: skip
    for it, (y, val_acc) in snapshots.items():
        if results.has(keys[it]):
            continue
        t0 = time.perf_counter()
        nets = per_net(ds.SyntheticSet(distiller.base_x, y, data.info.class_names, data.info.norm), data, args.repeats)
        print(keys[it]["labels"], {n: round(100 * v["mean"], 1) for n, v in nets.items()}, flush=True)
        results.add({**keys[it], "command": command_line(), "threads": torch.get_num_threads(), "iteration": it,
                     "net": net, "iterations": total, "val_every": every, "val_acc": val_acc,
                     "chosen_iteration": selected["chosen_iteration"], "chosen_val_acc": selected["val_acc"],
                     "checks": checks, "distill_s": round(distill_s, 1),
                     "mean_top_label": y.max(1).values.mean().item(), "nets": nets,
                     "eval_s": round(time.perf_counter() - t0, 1)})  # fmt: skip


def learned_rows(dataset: str) -> list[tuple[str, dict, str]]:
    """(learning net, accuracy per evaluating net, command) of the defaults matrix's labels rows on ``dataset``
    that were learned with one of the transfer nets: the own net from "DC protocol, own net", the rest from
    the transfer column."""
    rows = []
    for path in (RESULTS / "defaults.json", RESULTS / "defaults-ablation.json"):
        for r in json.loads(path.read_text())["rows"]:
            net = r["config"].get("net")
            if r["dataset"] != dataset or r["method"] != "labels" or net not in TRANSFER_NETS:
                continue
            if r.get("ablation") and not r["ablation"].startswith("learned with"):
                continue  # other ablations change more than the net
            d = r["distilled"]
            rows.append((net, {**d["transfer"]["nets"], net: d["standard"]}, r["command"]))
    return rows


def _gains(acc: dict, one_hot: dict, nets: list[str], own: str | None, lenet_column: bool = True) -> str:
    """Cells "accuracy (gain)" per net, then the mean gain over the nets but ``own`` and over the nets but LeNet."""
    gains = {n: 100 * (acc[n]["mean"] - one_hot[n]["mean"]) for n in nets}
    cells = " | ".join(f"{100 * acc[n]['mean']:.1f} ({gains[n]:+.1f})" + (" own" if n == own else "") for n in nets)
    others = [g for n, g in gains.items() if n != own]
    not_lenet = [g for n, g in gains.items() if n != "lenet"]
    row = f"{cells} | {sum(others) / len(others):+.1f} |"
    return row + f" {sum(not_lenet) / len(not_lenet):+.1f} |" if lenet_column else row


def table(dataset: str = "mnist5k") -> str:
    data = json.loads(OUT.read_text())
    mine = [r for r in data["rows"] if r["dataset"] == dataset]
    found = [r for r in mine if r["labels"] == "one-hot"]
    if not found:
        raise SystemExit(f"no one-hot row for {dataset}: run `benchmarks/label_gains.py --dataset {dataset}` first")
    one_hot, nets = found[0]["nets"], list(TRANSFER_NETS)
    means = " | mean gain, nets other than the learning net | mean gain, nets other than LeNet |"
    lines = [
        "| labels | " + " | ".join(NAMES[n] for n in nets) + means,
        "|---|" + "---|" * len(nets) + "---|---|",
        "| one-hot (reference) | " + " | ".join(f"{100 * one_hot[n]['mean']:.1f}" for n in nets) + " | | |",
    ]
    learned = learned_rows(dataset)
    for net, acc, _ in learned:
        lines.append(f"| learned with {NAMES[net]} | {_gains(acc, one_hot, nets, net)}")
    teachers = [r for r in mine if "teacher_test_acc" in r and r["labels"] != "one-hot"]
    for r in teachers:  # the teacher is a ConvNet-3: its own net
        lines.append(f"| {r['labels']} (mean top entry {r['mean_top_label']:.2f}) | "
                     f"{_gains(r['nets'], one_hot, nets, 'convnet')}")  # fmt: skip
    teacher = teachers[0]["teacher_test_acc"] if teachers else float("nan")
    lines.append(
        f"\nTest accuracy (%) on {dataset} and, in brackets, the gain over the same 100 base images with one-hot "
        f"labels; DC's protocol, 2 fresh nets per cell (5 for a learned row on its own net, marked 'own'), "
        f"ConvNets at width 32. Teacher: ConvNet-3 width 32 (its own net), Adam 1e-3, 15 epochs of all training "
        f"images, {100 * teacher:.1f} % test. Commands: `benchmarks/results/{OUT.name}` (teacher and one-hot rows), "
        f"`defaults.json` and `defaults-ablation.json` (learned rows)."
    )
    runs = [r for r in mine if "iteration" in r]
    if runs:
        lines += ["", trajectory_table(runs, one_hot, nets, dataset, learned)]
    return "\n".join(lines)


def trajectory_table(runs: list[dict], one_hot: dict, nets: list[str], dataset: str, learned: list) -> str:
    """The labels of one default run at a few iterations, scored on every net."""
    r = runs[0]
    kept = next((t for t in runs if t["iteration"] == r["chosen_iteration"]), None)
    same = kept is not None and any(  # the same labels score the same runs on every net but the own one
        net == r["net"] and all(acc[n]["runs"] == kept["nets"][n]["runs"] for n in nets if n != net)
        for net, acc, _ in learned
    )
    lines = [
        "| iteration | validation accuracy (selection) | mean top entry | "
        + " | ".join(NAMES[n] for n in nets)
        + f" | mean gain, nets other than {NAMES[r['net']]} |",
        "|---|---|---|" + "---|" * len(nets) + "---|",
    ]
    for t in sorted(runs, key=lambda t: t["iteration"]):
        kept = " (kept)" if t["iteration"] == t["chosen_iteration"] else ""
        lines.append(f"| {t['iteration']}{kept} | {100 * t['val_acc']:.1f} | {t['mean_top_label']:.2f} | "
                     f"{_gains(t['nets'], one_hot, nets, t['net'], lenet_column=False)}")  # fmt: skip
    best = max(r["checks"], key=lambda c: c["val_acc"])
    lines.append(
        f"\nOne run as `distilset distill labels --dataset {dataset}` makes it (default settings and seed, "
        f"{NAMES[r['net']]}, {r['iterations']} iterations, a validation check every {r['val_every']}; the script "
        f"steps the method itself to read the labels on the way): its labels at each iteration, "
        f"on the same 100 base images, DC's protocol, 2 fresh nets per cell, gain over one-hot labels in brackets. "
        f"Validation accuracy: the method's own check (one fresh net, its retraining, the held-out training "
        f"images). The selection keeps iteration {r['chosen_iteration']} ({100 * r['chosen_val_acc']:.1f} % "
        f"validation; best of {len(r['checks'])} checks: iteration {best['iteration']})"
        + (
            "; the kept labels score exactly as the 'learned with' row of that net above on the other nets (that "
            "row scores its own net with 5 nets)"
            if same
            else ""
        )
        + f". Command: `benchmarks/results/{OUT.name}`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--base", type=int, default=100)
    p.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trajectory", action="store_true", help="score one default run's labels at --at iterations")
    p.add_argument("--at", type=int, nargs="+", default=[100, 300, 1000, 3000], help="iterations (--trajectory)")
    p.add_argument("--table", action="store_true", help="print the markdown tables and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.dataset))
    else:
        trajectory(args) if args.trajectory else run(args)
