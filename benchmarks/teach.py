"""Teacher-student systems (`distilset teach`): do the papers' claims show here, with distilset's defaults?

    .venv/bin/python benchmarks/teach.py                   # every row (about 40 minutes on 2 cores; resumable)
    .venv/bin/python benchmarks/teach.py --parts omni      # one system
    .venv/bin/python benchmarks/teach.py --table           # the README tables

Every row is one ``distilset.teach`` run with the system's defaults except the options the row names (the
row's ``options``); the whole report is kept (settings, accuracies, the claims and whether they hold).

- ``omni`` (Radosavovic et al. 2018): mnist5k and Fashion-MNIST with 1 / 5 / 10 % of each class labelled,
  LeNet; teacher, student on multi-transform pseudo-labels, student on single-view pseudo-labels, and the
  model-distillation student on the teacher's soft predictions; 2 seeds on mnist5k.
- ``noisy`` (Li et al. 2017): Fashion-MNIST and mnist5k, 40 % symmetric or pair noise, the default clean share
  (2 %, at least 10 per class), lambda swept over 0, 0.2, ..., 1, with and without the confusion graph.
- ``fedmd`` (Li & Wang 2019): 10 parties with different nets, private task the first 6 classes, 3 images per
  class per party (or the skewed split), 20 rounds; public set the dataset's other 4 classes (the default: one
  domain, disjoint classes, as MNIST / EMNIST letters in the paper) or, for Fashion-MNIST, mnist5k digits.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import RESULTS, ResultFile

import distilset as ds
from distilset.teach import teach

OUT = RESULTS / "teach.json"
JOBS = {
    "omni": [(d, {"labelled": share}, seed) for d in ("mnist5k", "fashion-mnist") for share in (0.01, 0.05, 0.1)
             for seed in ((0, 1) if d == "mnist5k" else (0,))],
    "noisy": [(d, {"noise": noise, "graph": graph}, 0) for d in ("fashion-mnist", "mnist5k")
              for noise in ("symmetric", "pairs") for graph in ("none", "confusion")],
    "fedmd": [("fashion-mnist", {}, 0), ("fashion-mnist", {"public": "mnist5k"}, 0),
              ("fashion-mnist", {"split": "skewed"}, 0), ("mnist5k", {}, 0)],
}  # fmt: skip


def run(parts: list[str], redo: bool = False) -> None:
    torch.set_num_threads(2)
    results = ResultFile(OUT, {"benchmark": "teach"})
    if redo:
        for part in parts:
            results.drop({"system": part})
    cache: dict[str, ds.Dataset] = {}
    for part in parts:
        for dataset, options, seed in JOBS[part]:
            key = {"system": part, "dataset": dataset, "options": options, "seed": seed}
            if results.has(key):
                continue
            data = cache.setdefault(dataset, ds.load_dataset(dataset))
            start = time.perf_counter()
            report = teach(part, data, seed=seed, log=print, **options).report
            results.add({**key, "seconds": round(time.perf_counter() - start, 1), "report": report})


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table() -> None:
    rows = ResultFile(OUT, {"benchmark": "teach"}).data["rows"]
    print("<!-- teach omni table -->")
    print("| dataset | labelled | seed | teacher | teacher, student's schedule | student (multi-transform) | "
          "student (single view) | student (soft labels) | pseudo-labels kept / accuracy | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["system"] == "omni"):
        p, pl = r["report"], r["report"]["pseudo_labels"]
        print(f"| {r['dataset']} | {100 * r['options']['labelled']:g} % ({p['labelled']}) | {r['seed']} | "
              f"{pct(p['teacher_accuracy'])} | {pct(p.get('long_teacher_accuracy'))} | "
              f"**{pct(p['student_accuracy'])}** | "
              f"{pct(p['single_view_student_accuracy'])} | {pct(p['soft_student_accuracy'])} | "
              f"{100 * pl['kept'] / pl['of']:.0f} % / {pct(pl['accuracy_kept'])} | {r['seconds']:.0f} |")  # fmt: skip
    print("\n<!-- teach noisy table -->")
    print("| dataset | noise | graph | clean / noisy images | teacher (clean only) | lambda 0 | "
          "lambda 1 (noisy only) | chosen lambda: test | clean fine-tuning | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["system"] == "noisy"):
        p = r["report"]
        by = {s["lambda"]: s["test"] for s in p["sweep"]}
        print(f"| {r['dataset']} | 40 % {r['options']['noise']} | {r['options']['graph']} | "
              f"{p['clean']} + {p['validation']} / {p['noisy']} | {pct(p['teacher_accuracy'])} | {pct(by[0.0])} | "
              f"{pct(by[1.0])} | {p['chosen_lambda']:g}: **{pct(p['student_accuracy'])}** | "
              f"{pct(p.get('finetuned_accuracy'))} | {r['seconds']:.0f} |")  # fmt: skip
    print("\n<!-- teach fedmd table -->")
    print("| private task | public set | split | transfer only | after 20 rounds | revisits only (no consensus) | "
          "pooled private | parties gaining | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["system"] == "fedmd"):
        p = r["report"]
        public = p["config"]["public"]
        public = f"{public} classes 6-9" if public == r["dataset"] else public
        gaining = sum(f > t for f, t in zip(p["final"], p["transfer_only"], strict=True))
        print(f"| {r['dataset']} classes 0-5 | {public} | {p['config']['split']} | {pct(p['mean_transfer_only'])} | "
              f"**{pct(p['mean_final'])}** | "
              f"{pct(p['mean_revisit_only'])} | {pct(p['mean_pooled'])} | {gaining} / {len(p['parties'])} | "
              f"{r['seconds']:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--table", action="store_true", help="print the README tables from the results")
    parser.add_argument("--redo", action="store_true", help="run the rows of --parts again (replacing them)")
    args = parser.parse_args()
    if args.table:
        table()
    else:
        run(args.parts, args.redo)


if __name__ == "__main__":
    main()
