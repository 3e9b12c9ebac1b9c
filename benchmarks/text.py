"""Text dataset distillation (Sucholutsky & Schonlau 2021) on Rotten Tomatoes, in sentence-embedding space.

    .venv/bin/python benchmarks/text.py            # all rows (a few minutes on 2 cores; resumable)
    .venv/bin/python benchmarks/text.py --table    # the README table

Data: ``rotten-tomatoes`` (12,752 critics' snippets, fresh / rotten, as 384-d all-MiniLM-L6-v2 sentence
embeddings; 10,201 train / 2,551 test). Each row runs ``distilset distill dd --dataset rotten-tomatoes`` with
``--steps S`` (one item per class per step: 2 x S items), fixed or random init, hard or learned soft labels,
400 iterations (the default budget); every other setting is DD's default (an MLP with two hidden layers of 128,
3 epochs over the steps). Each set is scored by
- ``recipe``: its own recipe, the replay of its learned steps (fixed init: the stored init, one deterministic
  run; random init: 5 fresh inits);
- ``standard``: DC's protocol (SGD 0.01, momentum 0.9, 300 epochs) on the same MLP, order-agnostic;
- ``transfer``: DC's protocol on two nets the set was not made with: a linear classifier (``mlp`` depth 0) and
  an MLP with one hidden layer of 256; the mean of the two.
Random real snippets of the same count (class-balanced, seed 0) get DC's protocol on the same three nets; the
full training set gets the MLP trained by DC's protocol for 50 epochs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, ResultFile

import distilset as ds

OUT = RESULTS / "text.json"
NAME = "rotten-tomatoes"
OTHER_NETS = {"linear": {"net": "mlp", "net_kwargs": {"depth": 0}}, "mlp-256": {"net": "mlp",
              "net_kwargs": {"depth": 1, "width": 256}}}  # fmt: skip
STANDARD = {"protocol": "standard", "seed": 100}


def _evaluate(syn: ds.SyntheticSet, data: ds.Dataset, **options) -> dict:
    """One evaluation; a training that diverges (soft labels with negative mass under cross-entropy) is recorded
    as such, not dropped."""
    try:
        r = ds.evaluate(syn, data, **options)
    except ds.DistilsetError as e:
        return {"error": str(e)}
    return {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs}


def score(syn: ds.SyntheticSet, data: ds.Dataset, own_recipe: bool) -> dict:
    out = {}
    if own_recipe:
        fixed = isinstance(syn.recipe, ds.Replay) and syn.recipe.init.startswith("fixed")
        out["recipe"] = _evaluate(syn, data, repeats=1 if fixed else 5)
    out["standard"] = _evaluate(syn, data, net="mlp", repeats=3, **STANDARD)
    nets = {k: _evaluate(syn, data, repeats=3, **v, **STANDARD) for k, v in OTHER_NETS.items()}
    scored = [v["mean"] for v in nets.values() if "mean" in v]
    out["transfer"] = (
        {"nets": nets, "mean": sum(scored) / len(scored)}
        if len(scored) == len(nets)
        else {"nets": nets, "error": "diverged on a transfer net"}
    )
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    results = ResultFile(OUT, {"iterations": args.iterations, "protocol": "see benchmarks/text.py"})
    data = ds.load_dataset(NAME)
    if not results.has({"part": "full"}):
        full = ds.SyntheticSet(data.train_x, data.train_y, data.info.class_names, data.info.norm,
                               recipe=ds.Standard(epochs=50))  # fmt: skip
        r = ds.evaluate(full, data, net="mlp", repeats=2, seed=100)
        results.add({"part": "full", "images": len(full),
                     "mlp": {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs}})  # fmt: skip
    for steps in (1, 5, 10):
        key = {"part": "random", "items": 2 * steps}
        if not results.has(key):
            real = ds.baseline("random", data, ipc=steps, seed=0)
            real.net = {"name": "mlp", "kwargs": {}, "init": "default"}
            results.add({**key, "command": f"distilset baseline random --dataset {NAME} --ipc {steps} --seed 0",
                         "scores": score(real, data, own_recipe=False)})  # fmt: skip
        for init in ("fixed", "random"):
            for soft in (False, True):
                key = {"part": "dd", "items": 2 * steps, "init": init, "soft_labels": soft}
                if results.has(key):
                    continue
                command = (f"distilset distill dd --dataset {NAME} --steps {steps} --init {init}"
                           f"{' --soft-labels' if soft else ''} --iterations {args.iterations} --out DIR")  # fmt: skip
                print(f"== {command}", flush=True)
                t0 = time.perf_counter()
                syn = ds.distill("dd", data, steps=steps, init=init, soft_labels=soft, iterations=args.iterations)
                distill_s = time.perf_counter() - t0
                results.add({**key, "command": command, "distill_s": round(distill_s, 1), "config": syn.config,
                             "scores": score(syn, data, own_recipe=True)})  # fmt: skip


def _cell(x: dict | None) -> str:
    if x is None:
        return "—"
    if "error" in x:
        return "diverges (negative label mass)" if "negative" in json.dumps(x) else "diverges"
    return f"{100 * x['mean']:.1f}" if "std" not in x else f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f}"


def table() -> str:
    data = json.loads(OUT.read_text())
    rows, m = data["rows"], data["machine"]
    full = next((r for r in rows if r["part"] == "full"), None)
    lines = [
        "| items | set | own recipe | MLP, DC's protocol | other nets (linear, MLP-256: mean) | distill time |",
        "|---|---|---|---|---|---|",
    ]
    for items in (2, 10, 20):
        for r in rows:
            if r.get("items") != items:
                continue
            s = r["scores"]
            if r["part"] == "random":
                name = "random real snippets"
            else:
                name = f"dd, {r['init']} init, {'soft' if r['soft_labels'] else 'hard'} labels"
            time_s = f"{r['distill_s'] / 60:.1f} min" if "distill_s" in r else "—"
            lines.append(f"| {items} | {name} | {_cell(s.get('recipe'))} | {_cell(s['standard'])} | "
                         f"{_cell(s['transfer'])} | {time_s} |")  # fmt: skip
    if full:
        lines.append(f"| {full['images']} | full training set | — | {_cell(full['mlp'])} (50 epochs) | — | — |")
    lines.append(
        f"\nTest accuracy (%) on 2,551 test snippets, mean ± std over fresh nets (a fixed-init replay is one "
        f"deterministic run); {data['settings']['iterations']} distillation iterations; {m['cores']} CPU cores, torch "
        f"{m['torch']}, {m['date']}. Commands: `benchmarks/results/text.json`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="print the markdown table and exit")
    args = p.parse_args()
    print(table()) if args.table else run(args)
