"""Label distillation benchmark (Bohdal et al.): learned labels vs one-hot labels of the same base images vs
random real subsets, within mnist5k / fashion-mnist and across datasets.

    .venv/bin/python benchmarks/labels.py                 # all rows, most important first (resumable)
    .venv/bin/python benchmarks/labels.py --table
    .venv/bin/python benchmarks/labels.py --softness      # how peaked within- vs cross-dataset labels are

Each row distills LeNet labels for ``--ridge-iterations`` / ``--second-order-iterations`` outer steps with
the paper's settings (uniform initial labels, target batch 1024, base batch 10 / 25 / 50 for 10-20 / 50 /
100 base images), then trains 5 fresh LeNets on the base images with the learned labels, with their
one-hot labels, and on a random real subset of the same size: our standard protocol (SGD, 300 epochs) and
the paper's (Adam lr 1e-3 on base-batch minibatches for the step count the distillation measured).
Rows go to benchmarks/results/labels.json as they finish.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile

import distilset as ds
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
EVAL = {"net": "lenet", "repeats": 5, "epochs": 300}


def base_batch(base: int) -> int:
    """The paper's inner (base) minibatch size."""
    return 10 if base <= 20 else (25 if base <= 50 else 50)


def paper_eval(syn: ds.SyntheticSet, data: ds.Dataset, steps: int, device: str) -> list[float]:
    """The paper's retraining: Adam lr 1e-3, base-batch minibatches, the distillation's step count."""
    batch = base_batch(len(syn))
    epochs = max(1, math.ceil(steps * batch / len(syn)))
    res = ds.evaluate(syn, data, net="lenet", repeats=5, epochs=epochs, optimizer="adam", lr=1e-3, batch_size=batch,
                      device=device)  # fmt: skip
    return _acc(res)


def run_row(target: str, source: str | None, base: int, variant: str, iterations: int, device: str = "cpu") -> dict:
    data = ds.load_dataset(target)
    src = ds.load_dataset(source) if source else None
    ev = {**EVAL, "device": device}
    t0 = time.perf_counter()
    cfg = LabelConfig(base=base, variant=variant, base_batch=base_batch(base))
    ld = LabelDistillation(data, cfg, seed=0, source=src, device=device)
    for it in range(iterations):
        m = ld.step(it)
    distill_s = time.perf_counter() - t0
    syn = ld.synthetic_set()
    row = {
        "iterations": iterations,
        "distill_s": round(distill_s, 1),
        "final_loss": m["loss"],
        "resets": ld.resets,
        "train_steps": ld.train_steps,
        "softness": label_softness(syn.labels),
        "learned": _acc(ds.evaluate(syn, data, **ev)),
        "learned_paper": paper_eval(syn, data, ld.train_steps, device),
    }
    if source is None:
        onehot = ds.SyntheticSet(syn.images, ld.base_classes.clone(), syn.class_names, syn.mean, syn.std)
        row["onehot"] = _acc(ds.evaluate(onehot, data, **ev))
        row["onehot_paper"] = paper_eval(onehot, data, ld.train_steps, device)
        row["random_real"] = _acc(ds.evaluate(ds.baseline("random", data, ipc=base // 10, seed=1), data, **ev))
        if base == 100 and target == "mnist5k" and device == "cpu":  # other architectures on the same labels
            for net, kw in (("convnet", {"width": 32}), ("mlp", {})):
                row[f"learned_{net}"] = _acc(ds.evaluate(syn, data, **{**ev, "net": net, "net_kwargs": kw}))
                row[f"onehot_{net}"] = _acc(ds.evaluate(onehot, data, **{**ev, "net": net, "net_kwargs": kw}))
    return row


def label_softness(labels: torch.Tensor) -> dict:
    """How peaked the learned labels are: median largest entry, and rows whose largest entry is under 0.5."""
    top = labels.max(1).values
    return {"top_median": float(top.median()), "rows_top_below_half": int((top < 0.5).sum()), "rows": len(top)}


def softness(iterations: int) -> None:
    """Within- vs cross-dataset label softness for mnist5k, 100 base images, ridge (README's cross-dataset note)."""
    data, rows = ds.load_dataset("mnist5k"), {}
    for name, source in (("mnist5k", None), ("fashion-mnist", ds.load_dataset("fashion-mnist"))):
        ld = LabelDistillation(data, LabelConfig(base=100, variant="ridge"), seed=0, source=source)
        for it in range(iterations):
            ld.step(it)
        rows[name] = label_softness(ld.labels.detach())
        print(name, rows[name], flush=True)
    out = RESULTS / "labels-softness.json"
    out.write_text(json.dumps({"iterations": iterations, "base_images_from": rows}, indent=2))


def _acc(res) -> list[float]:
    return [res.accuracy_mean, res.accuracy_std]


def table() -> str:
    files = [p for p in sorted(RESULTS.glob("labels*.json")) if "rows" in json.loads(p.read_text())]
    return "\n\n".join(_table(path) for path in files)


def _table(path) -> str:
    data = json.loads(path.read_text())
    m = data["machine"]
    where = f"{m['gpu']}, torch {m['torch']}" if m.get("gpu") else f"{m['cores']} CPU cores, one thread per process"
    lines = [
        f"**{path.stem}** ({where})\n",
        "| target | base images from | base | variant | outer steps | learned labels | one-hot labels | random real "
        "| learned (paper retraining) | one-hot (paper retraining) | distill time |",
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
        "epochs) unless marked."
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
    p.add_argument("--results", default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--softness", action="store_true", help="measure how soft within/cross-dataset labels are")
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        print(table())
    elif args.softness:
        torch.set_num_threads(args.threads)
        softness(args.ridge_iterations)
    else:
        torch.set_num_threads(args.threads)
        iterations = {"ridge": args.ridge_iterations, "second-order": args.second_order_iterations}
        name = f"labels-{args.tag}.json" if args.tag else "labels.json"
        results = ResultFile(
            Path(args.results or RESULTS) / name, {"iterations": iterations, "eval": EVAL}, args.device
        )
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
