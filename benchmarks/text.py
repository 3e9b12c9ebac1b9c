"""Text dataset distillation (Sucholutsky & Schonlau 2021) on Rotten Tomatoes, offline.

    .venv/bin/python benchmarks/text.py                 # all rows (about an hour on 2 cores; resumable)
    .venv/bin/python benchmarks/text.py --parts tokens  # one part
    .venv/bin/python benchmarks/text.py --table         # the README tables

Data: 12,752 critics' snippets, fresh / rotten, 10,201 train / 2,551 test (``distilset.data.text``).

- ``tokens`` (``rotten-tomatoes``): each snippet is 48 all-MiniLM-L6-v2 token ids over the model's frozen token
  embeddings; a distilled item is a (48, 384) block of embedding rows. Nets: an LSTM (DD's default here) and
  Kim's TextCNN, each the transfer net of the other's sets. DD's defaults on token rows: the LSTM, the text
  paper's IMDB layout (1 step x 10 per class x 5 epochs: 20 items), 400 iterations, a real batch of 256, initial
  lr 0.005 (a TextCNN without dropout).
- ``sentences`` (``rotten-tomatoes-sentences``): each snippet is its 384-d sentence embedding; an MLP (two hidden
  layers of 128), DD's default budget (400 iterations).

Each row runs ``distilset distill dd`` with a layout ``--steps S --ipc P --epochs E`` (2 x S x P items), fixed or
random init, hard or learned soft labels; every other setting is DD's default. (Token rows made before the
token-row defaults changed used 1 item per class per step and 3 epochs; their commands carry that layout.) Each set
is scored by
- ``recipe``: its own recipe, the replay of its learned steps (fixed init: the stored init, one deterministic
  run; random init: 3 fresh inits);
- ``standard``: DC's protocol (SGD 0.01, momentum 0.9, 300 epochs) on the net it was distilled with,
  order-agnostic;
- ``transfer``: DC's protocol on the other nets of the part (tokens: the LSTM for TextCNN sets and the other
  way round; sentences: a linear classifier and an MLP with one hidden layer of 256), their mean.
Random real snippets of the same count (class-balanced, seed 0) get DC's protocol on the same nets; the full
training set gets each net trained by DC's protocol for a few epochs (the row says how many). 2 fresh nets per
score on tokens, 3 on sentences.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, ResultFile

import distilset as ds

OUT = RESULTS / "text.json"
PARTS = {
    "tokens": {
        "dataset": "rotten-tomatoes",
        "nets": {"lstm": {"net": "lstm"}, "textcnn": {"net": "textcnn"}},
        "options": {"iterations": 400},
        # (net, (steps, ipc, epochs), init, soft labels)
        "jobs": [
            ("lstm", (1, 10, 5), "fixed", False),  # DD's defaults on token rows
            ("lstm", (1, 1, 5), "fixed", False),
            ("lstm", (1, 5, 5), "fixed", False),
            ("lstm", (1, 10, 5), "random", False),  # the text paper's IMDB run (it also learns the labels)
            ("lstm", (1, 10, 5), "fixed", True),
            ("textcnn", (10, 1, 3), "fixed", False),  # the image paper's layout
            ("textcnn", (10, 1, 3), "random", False),
            ("lstm", (10, 1, 3), "fixed", False),
            ("textcnn", (1, 1, 3), "fixed", False),
            ("textcnn", (5, 1, 3), "fixed", False),
        ],
        "repeats": 2,
        "full_epochs": 5,
    },
    "sentences": {
        "dataset": "rotten-tomatoes-sentences",
        "nets": {
            "mlp": {"net": "mlp"},
            "linear": {"net": "mlp", "net_kwargs": {"depth": 0}},
            "mlp-256": {"net": "mlp", "net_kwargs": {"depth": 1, "width": 256}},
        },  # fmt: skip
        "options": {"iterations": 400},
        "jobs": [
            ("mlp", (s, 1, 3), init, soft) for s in (1, 5, 10) for init in ("fixed", "random") for soft in (False, True)
        ],  # fmt: skip
        "repeats": 3,
        "full_epochs": 50,
    },
}


def _evaluate(syn: ds.SyntheticSet, data: ds.Dataset, **options) -> dict:
    """One evaluation; a training that diverges (soft labels with negative mass under cross-entropy) is recorded
    as such, not dropped."""
    try:
        r = ds.evaluate(syn, data, **options)
    except ds.DistilsetError as e:
        return {"error": str(e)}
    return {"mean": r.accuracy_mean, "std": r.accuracy_std, "runs": r.runs}


def score(syn: ds.SyntheticSet, data: ds.Dataset, part: dict, own: str, own_recipe: bool) -> dict:
    out = {}
    repeats = part["repeats"]
    if own_recipe:
        fixed = isinstance(syn.recipe, ds.Replay) and syn.recipe.init.startswith("fixed")
        out["recipe"] = _evaluate(syn, data, repeats=1 if fixed else 3)
    standard = {"protocol": "standard", "seed": 100, "repeats": repeats}
    out["standard"] = _evaluate(syn, data, **part["nets"][own], **standard)
    nets = {k: _evaluate(syn, data, **v, **standard) for k, v in part["nets"].items() if k != own}
    scored = [v["mean"] for v in nets.values() if "mean" in v]
    out["transfer"] = {"nets": nets, "mean": sum(scored) / len(scored)} if len(scored) == len(nets) else {
        "nets": nets, "error": "diverged on a transfer net"}  # fmt: skip
    return out


def run_part(results: ResultFile, name: str) -> None:
    part = PARTS[name]
    data = ds.load_dataset(part["dataset"])
    for net, spec in part["nets"].items():
        key = {"part": name, "kind": "full", "net": net}
        if not results.has(key):
            full = ds.baseline("full", data)
            t0 = time.perf_counter()
            r = _evaluate(full, data, **spec, protocol="standard", epochs=part["full_epochs"], seed=100, repeats=1)
            results.add({**key, "items": len(full), "epochs": part["full_epochs"], "accuracy": r,
                         "eval_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
    for own, (steps, ipc, epochs), init, soft in part["jobs"]:
        items = data.num_classes * steps * ipc
        key = {"part": name, "kind": "random", "net": own, "items": items}
        if not results.has(key):
            real = ds.baseline("random", data, ipc=items // data.num_classes, seed=0)
            real.net = {"name": part["nets"][own]["net"], "kwargs": part["nets"][own].get("net_kwargs", {}),
                        "init": "default"}  # fmt: skip
            command = (
                f"distilset baseline random --dataset {part['dataset']} --ipc {items // data.num_classes} --seed 0"
            )
            results.add({**key, "command": command, "scores": score(real, data, part, own, own_recipe=False)})
        key = {"part": name, "kind": "dd", "net": own, "items": items, "init": init, "soft_labels": soft}
        if any(
            _layout(r) == (steps, ipc, epochs)
            for r in results.data["rows"]
            if all(r.get(k) == v for k, v in key.items())
        ):
            continue
        options = {"net": part["nets"][own]["net"], "steps": steps, "ipc": ipc, "epochs": epochs, "net_init": init,
                   "soft_labels": soft, **part["options"]}  # fmt: skip
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if not isinstance(v, bool))
        command = (
            f"distilset distill dd --dataset {part['dataset']} {flags}{' --soft-labels' if soft else ''} --out DIR"
        )
        print(f"== {command}", flush=True)
        t0 = time.perf_counter()
        iterations = options.pop("iterations")
        syn = ds.distill("dd", data, iterations=iterations, **options)
        distill_s = time.perf_counter() - t0
        results.add({**key, "command": command, "distill_s": round(distill_s, 1), "config": syn.config,
                     "scores": score(syn, data, part, own, own_recipe=True)})  # fmt: skip


def _layout(row: dict) -> tuple[int, int, int]:
    """A DD row's (steps, items per class per step, epochs), from the config it ran with."""
    c = row["config"]
    return c["steps"], c["ipc"], c["epochs"]


def _cell(x: dict | None) -> str:
    if x is None:
        return "—"
    if "error" in x:
        return "diverges (negative label mass)" if "negative" in json.dumps(x) else "diverges"
    return f"{100 * x['mean']:.1f}" if "std" not in x else f"{100 * x['mean']:.1f} ± {100 * x['std']:.1f}"


def table() -> str:
    data = json.loads(OUT.read_text())
    rows, m = data["rows"], data["machine"]
    lines = []
    for name, part in PARTS.items():
        these = [r for r in rows if r["part"] == name]
        if not these:
            continue
        others = {own: ", ".join(k for k in part["nets"] if k != own) for own in part["nets"]}
        lines += [
            f"\n**{name}** (`{part['dataset']}`; distillation: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in part["options"].items())
            + ")\n",
            "| net | items | set | layout (steps x per class x epochs) | own recipe | own net, DC's protocol "
            "| other nets, DC's protocol (mean) | distill time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        order = {net: i for i, net in enumerate(part["nets"])}

        def sort_key(r: dict, order: dict = order) -> tuple:
            return order[r["net"]], r["items"], r["kind"], r.get("config", {}).get("epochs", 0)

        for r in sorted((r for r in these if r["kind"] != "full"), key=sort_key):
            s = r["scores"]
            if r["kind"] == "random":
                label, layout = "random real snippets", "—"
            else:
                label = f"dd, {r['init']} init, {'soft' if r['soft_labels'] else 'hard'} labels"
                layout = " x ".join(map(str, _layout(r)))
            minutes = f"{r['distill_s'] / 60:.1f} min" if "distill_s" in r else "—"
            scores = f"{_cell(s.get('recipe'))} | {_cell(s['standard'])} | {_cell(s['transfer'])}"
            lines.append(
                f"| {r['net']} | {r['items']} | {label} | {layout} | {scores} ({others[r['net']]}) | {minutes} |"
            )
        for r in (r for r in these if r["kind"] == "full"):
            lines.append(f"| {r['net']} | {r['items']} | full training set ({r['epochs']} epochs) | — | — | "
                         f"{_cell(r['accuracy'])} | — | — |")  # fmt: skip
    lines.append(
        f"\nTest accuracy (%) on the 2,551 test snippets (58 % fresh), mean ± std over fresh nets; {m['cores']} CPU "
        f"cores, torch {m['torch']}, {m['date']}. Commands: the rows of `benchmarks/results/text.json`."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the markdown tables and exit")
    args = p.parse_args()
    if args.table:
        print(table())
    else:
        torch.set_num_threads(args.threads)
        results = ResultFile(OUT, {"protocol": "see benchmarks/text.py"})
        for part_name in args.parts:
            run_part(results, part_name)
