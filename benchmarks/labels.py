"""Label distillation benchmark (Bohdal et al.): learned labels vs one-hot labels of the same base images vs
random real subsets, within mnist5k / fashion-mnist and across datasets.

    .venv/bin/python benchmarks/labels.py                 # all rows, most important first (resumable)
    .venv/bin/python benchmarks/labels.py --table
    .venv/bin/python benchmarks/labels.py --softness      # how peaked within- vs cross-dataset labels are

Each row distills LeNet labels for ``--ridge-iterations`` / ``--second-order-iterations`` outer steps with
the paper's settings, as ``LabelConfig`` resolves them from the number of base images (uniform initial
labels, target batch 1024, base batch 10 / 25 / 50 for 10-20 / 50 / 100 base images, the best labels on a
held-out validation share kept), then trains 5 fresh LeNets on the base images with the learned labels,
with their one-hot labels, and on a random real subset of the same size: our standard protocol (DC's: SGD,
300 epochs, ``protocol="standard"``) and the paper's retraining, which is the set's own recipe (Adam lr 1e-3
on base-batch minibatches, no weight decay, constant lr, for the step count the distillation measured;
the default protocol). Rows go to benchmarks/results/labels.json as they finish, each with its command line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile, command_line

import distilset as ds
from distilset.io import write_json
from distilset.methods.base import Context
from distilset.methods.labels import LabelConfig, LabelDistillation

# (target, source or None, base examples, variant) in the order they are run.
ROWS = [
    ("mnist5k", None, 100, "ridge"),
    ("mnist5k", "fashion-mnist", 100, "ridge"),
    ("mnist5k", None, 100, "second-order"),
    ("mnist5k", "digits", 100, "ridge"),
    *[("mnist5k", None, n, "ridge") for n in (10, 20, 50)],
    *[("fashion-mnist", None, n, "ridge") for n in (10, 20, 50, 100)],
    ("mnist5k", "fashion-mnist", 100, "second-order"),
    *[("mnist5k", None, n, "second-order") for n in (10, 20, 50)],
    *[("fashion-mnist", None, n, "second-order") for n in (10, 20, 50, 100)],
]
# How fresh LeNets are trained on a set: DC's standard protocol, and the set's own recipe (the paper's retraining).
STANDARD = {"net": "lenet", "repeats": 5, "protocol": "standard", "epochs": 300}
PAPER = {"net": "lenet", "repeats": 5, "protocol": "recipe"}
EVAL = {"standard": STANDARD, "paper": PAPER}


def run_row(target: str, source: str | None, base: int, variant: str, iterations: int, device: str = "cpu") -> dict:
    data = ds.load_dataset(target)
    standard, paper = {**STANDARD, "device": device}, {**PAPER, "device": device}
    t0 = time.perf_counter()
    ld = LabelDistillation(data, LabelConfig(base=base, variant=variant, base_dataset=source),
                           Context(seed=0, device=device))  # fmt: skip
    for it in range(iterations):
        m = ld.step(it)
    syn = ld.synthetic_set()  # the final validation check picks the labels: part of the distillation time
    distill_s = time.perf_counter() - t0
    row = {
        "iterations": iterations,
        "distill_s": round(distill_s, 1),
        "final_loss": m["loss"],
        "resets": ld.resets,
        "base_batch": ld.cfg.base_batch,
        "train_steps": syn.extra["train_steps"],
        "val_acc": syn.extra["val_acc"],
        "chosen_iteration": syn.extra["chosen_iteration"],
        "softness": label_softness(syn.labels),
        "learned": _acc(ds.evaluate(syn, data, **standard)),
        "learned_paper": _acc(ds.evaluate(syn, data, **paper)),
    }
    if source is None:  # the same base images with their one-hot labels, trained by the same recipe
        onehot = ds.SyntheticSet(syn.images, ld.base_classes.clone(), syn.class_names, syn.norm, recipe=syn.recipe)
        row["onehot"] = _acc(ds.evaluate(onehot, data, **standard))
        row["onehot_paper"] = _acc(ds.evaluate(onehot, data, **paper))
        real = ds.baseline("random", data, ipc=base // 10, seed=1)
        row["random_real"] = _acc(ds.evaluate(real, data, **standard))
        if base == 100 and target == "mnist5k" and device == "cpu":  # other architectures on the same labels
            for net, kw in (("convnet", {"width": 32}), ("mlp", {})):
                row[f"learned_{net}"] = _acc(ds.evaluate(syn, data, **{**standard, "net": net, "net_kwargs": kw}))
                row[f"onehot_{net}"] = _acc(ds.evaluate(onehot, data, **{**standard, "net": net, "net_kwargs": kw}))
    return row


def label_softness(labels: torch.Tensor) -> dict:
    """How peaked the learned labels are: median largest entry, and rows whose largest entry is under 0.5."""
    top = labels.max(1).values
    return {"top_median": float(top.median()), "rows_top_below_half": int((top < 0.5).sum()), "rows": len(top)}


def softness(iterations: int, results: Path, device: str = "cpu") -> None:
    """Within- vs cross-dataset label softness for mnist5k, 100 base images, ridge (README's cross-dataset note):
    of the labels the set keeps (the best on the held-out validation share)."""
    data, rows = ds.load_dataset("mnist5k"), {}
    for name, source in (("mnist5k", None), ("fashion-mnist", "fashion-mnist")):
        cfg = LabelConfig(base=100, variant="ridge", base_dataset=source)
        ld = LabelDistillation(data, cfg, Context(seed=0, device=device))
        for it in range(iterations):
            ld.step(it)
        rows[name] = label_softness(ld.synthetic_set().labels)
        print(name, rows[name], flush=True)
    out = {"iterations": iterations, "labels": "the set's (best-validation) labels", "base_images_from": rows,
           "command": command_line()}  # fmt: skip
    write_json(results / "labels-softness.json", out)


def _acc(res) -> list[float]:
    return [res.accuracy_mean, res.accuracy_std]


def table(results: Path = RESULTS) -> str:
    files = [p for p in sorted(results.glob("labels*.json")) if "rows" in json.loads(p.read_text())]
    return "\n\n".join(_table(path) for path in files)


def _table(path) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    where = f"{m['gpu']}, torch {m['torch']}" if m.get("gpu") else f"{m['cores']} CPU cores, one thread per process"
    lines = [
        f"**{path.stem}** ({where})\n",
        "| target | base images from | base | variant | outer steps | learned labels | one-hot labels | random real "
        "| learned (Adam retraining) | one-hot (Adam retraining) | distill time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v):
        return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" if v else "-"

    for r in data["rows"]:
        lines.append(
            f"| {r['target']} | {r['source'] or r['target']} | {r['base']} | {r['variant']} | {r['iterations']} | "
            f"{cell(r['learned'])} | {cell(r.get('onehot'))} | {cell(r.get('random_real'))} | "
            f"{cell(r['learned_paper'])} ({r['train_steps']} steps) | {cell(r.get('onehot_paper'))} | "
            f"{r['distill_s'] / 60:.1f} min |"
        )
    for r in data["rows"]:
        if "learned_mlp" in r:
            lines.append(
                f"\n{r['target']}, {r['base']} base, {r['variant']}: learned vs one-hot labels on ConvNet-3 "
                f"(width 32) {cell(r['learned_convnet'])} vs {cell(r['onehot_convnet'])}; MLP "
                f"{cell(r['learned_mlp'])} vs {cell(r['onehot_mlp'])} (standard protocol)."
            )
    lines.append(
        "\nLeNet; evaluation: 5 fresh nets each, final test accuracy mean ± std, standard protocol (SGD, 300 "
        "epochs) unless marked; Adam retraining: the set's recipe (Adam, base batch, the measured steps) with the "
        "harness's weight decay and lr drop, not the paper's test."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ridge-iterations", type=int, default=1500)
    p.add_argument("--second-order-iterations", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-rows", type=int, default=len(ROWS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=None, metavar="TARGET:SOURCE:BASE:VARIANT", help="run one row (SOURCE - for none)")
    p.add_argument("--tag", default=None, help="results file benchmarks/results/labels-TAG.json (default labels.json)")
    p.add_argument("--results", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    p.add_argument("--softness", action="store_true", help="measure how soft within/cross-dataset labels are")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        print(table(args.results))
    elif args.softness:
        torch.set_num_threads(args.threads)
        softness(args.ridge_iterations, args.results, args.device)
    else:
        torch.set_num_threads(args.threads)
        iterations = {"ridge": args.ridge_iterations, "second-order": args.second_order_iterations}
        name = f"labels-{args.tag}.json" if args.tag else "labels.json"
        results = ResultFile(args.results / name, {"iterations": iterations, "eval": EVAL}, args.device)
        rows = ROWS[: args.max_rows]
        if args.only:
            t, s, b, v = args.only.split(":")
            rows = [(t, None if s == "-" else s, int(b), v)]
        for target, source, base, variant in rows:
            key = {"target": target, "source": source, "base": base, "variant": variant}
            if results.has(key):
                continue
            row = run_row(target, source, base, variant, iterations[variant], args.device)
            results.add({**key, **row})
            print(json.dumps({**key, **row}), flush=True)
