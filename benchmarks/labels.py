"""Label distillation benchmark (Bohdal et al.): learned labels vs one-hot labels of the same base images vs
random real subsets, within mnist5k / fashion-mnist and across datasets.

    .venv/bin/python benchmarks/labels.py                 # all rows, most important first (resumable)
    .venv/bin/python benchmarks/labels.py --table

Each row distills ``--iterations`` outer steps (LeNet), then trains 5 fresh LeNets (standard protocol,
300 epochs) on the base images with the learned labels, with their one-hot labels, and on a random real
subset of the same size. Rows go to benchmarks/results/labels.json as they finish.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, ResultFile

import distilset as ds
from distilset.methods.labels import LabelConfig, LabelDistillation

# (target, source or None, base examples, variant) in the order they are run.
ROWS = [
    ("mnist5k", None, 100, "ridge"),
    ("mnist5k", None, 100, "second-order"),
    ("mnist5k", "fashion-mnist", 100, "ridge"),
    ("mnist5k", "digits", 100, "ridge"),
    ("mnist5k", "fashion-mnist", 100, "second-order"),
    ("mnist5k", "digits", 100, "second-order"),
    *[("mnist5k", None, n, v) for n in (10, 20, 50) for v in ("ridge", "second-order")],
    *[("fashion-mnist", None, n, v) for n in (10, 20, 50, 100) for v in ("ridge", "second-order")],
]
EVAL = {"net": "lenet", "repeats": 5, "epochs": 300}


def run_row(target: str, source: str | None, base: int, variant: str, iterations: int) -> dict:
    data = ds.load_dataset(target)
    src = ds.load_dataset(source) if source else None
    t0 = time.perf_counter()
    ld = LabelDistillation(data, LabelConfig(base=base, variant=variant), seed=0, source=src)
    for it in range(iterations):
        m = ld.step(it)
    distill_s = time.perf_counter() - t0
    syn = ld.synthetic_set()
    learned = ds.evaluate(syn, data, **EVAL)
    row = {
        "distill_s": round(distill_s, 1),
        "final_loss": m["loss"],
        "resets": ld.resets,
        "learned": [learned.accuracy_mean, learned.accuracy_std],
    }
    if source is None:
        onehot = ds.SyntheticSet(syn.images, ld.base_classes.clone(), syn.class_names, syn.mean, syn.std)
        row["onehot"] = _acc(ds.evaluate(onehot, data, **EVAL))
        row["random_real"] = _acc(ds.evaluate(ds.baseline("random", data, ipc=base // 10, seed=1), data, **EVAL))
        if base == 100 and target == "mnist5k":  # other optimisers and architectures on the same labels
            row["learned_adam"] = _acc(ds.evaluate(syn, data, **{**EVAL, "optimizer": "adam"}))
            row["onehot_adam"] = _acc(ds.evaluate(onehot, data, **{**EVAL, "optimizer": "adam"}))
            for net, kw in (("convnet", {"width": 32}), ("mlp", {})):
                row[f"learned_{net}"] = _acc(ds.evaluate(syn, data, **{**EVAL, "net": net, "net_kwargs": kw}))
                row[f"onehot_{net}"] = _acc(ds.evaluate(onehot, data, **{**EVAL, "net": net, "net_kwargs": kw}))
    return row


def _acc(res) -> list[float]:
    return [res.accuracy_mean, res.accuracy_std]


def table() -> str:
    data = json.loads((RESULTS / "labels.json").read_text())
    lines = [
        "| target | base images from | base | variant | learned labels | one-hot labels | random real | distill time |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(v):
        return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}" if v else "-"

    for r in data["rows"]:
        lines.append(
            f"| {r['target']} | {r['source'] or r['target']} | {r['base']} | {r['variant']} | "
            f"{cell(r['learned'])} | {cell(r.get('onehot'))} | {cell(r.get('random_real'))} | "
            f"{r['distill_s'] / 60:.1f} min |"
        )
    for r in data["rows"]:
        if "learned_adam" in r:
            lines.append(
                f"\n{r['target']}, {r['base']} base, {r['variant']}: learned vs one-hot labels with Adam "
                f"{cell(r['learned_adam'])} vs {cell(r['onehot_adam'])}; ConvNet-3 (width 32) "
                f"{cell(r['learned_convnet'])} vs {cell(r['onehot_convnet'])}; MLP {cell(r['learned_mlp'])} "
                f"vs {cell(r['onehot_mlp'])}."
            )
    s = data["settings"]
    lines.append(
        f"\nLeNet, {s['iterations']} outer steps per row; evaluation: 5 fresh LeNets, standard protocol "
        f"(SGD), 300 epochs, final test accuracy mean ± std; {data['machine']['cores']} CPU cores."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-rows", type=int, default=len(ROWS))
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        print(table())
    else:
        torch.set_num_threads(args.threads)
        results = ResultFile(RESULTS / "labels.json", {"iterations": args.iterations, "eval": EVAL})
        for target, source, base, variant in ROWS[: args.max_rows]:
            key = {"target": target, "source": source, "base": base, "variant": variant}
            if results.has(key):
                continue
            row = run_row(target, source, base, variant, args.iterations)
            results.add({**key, **row})
            print(json.dumps({**key, **row}), flush=True)
