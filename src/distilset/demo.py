"""``make demo``: distill the embedded ``digits`` set with default flags and compare with real images.

Prints one table: Dataset Distillation (fixed and random init), label distillation and distribution matching
(the most accuracy per minute on a CPU in the matching benchmark), each with nothing but its defaults (resolved
from the dataset: an MLP for 8x8 inputs, the paper's decay period, ...), scored by the set's own training
recipe, next to real images of the same count (under DC's protocol with the same net, and for DM under DM's
own net and recipe).
A few minutes on 2 CPU cores; sets, pictures and their recorded evaluations land in out/demo/, and the
demo ends by writing out/demo/report.html (``distilset report``) over all of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import distilset as ds
from distilset.rundir import prepare_out, releases_locks


def _row(name: str, images: int, res: ds.EvalResult, seconds: float) -> str:
    acc = f"{100 * res.accuracy_mean:.1f} ± {100 * res.accuracy_std:.1f}"
    return f"| {name:<38} | {images:>6} | {acc:>13} | {res.protocol:<8} | {res.repeats:>4} | {seconds:>6.1f} |"


@releases_locks
def main(out: str = "out/demo") -> None:
    data = ds.load_dataset("digits")
    print(f"{data}\n")
    print(f"| {'set':<38} | {'images':>6} | {'test acc (%)':>13} | {'protocol':<8} | {'nets':>4} | {'time s':>6} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 15}|{'-' * 10}|{'-' * 6}|{'-' * 8}|")
    runs = (("DD, fixed init", "dd", {}, 1), ("DD, random init", "dd", {"init": "random"}, 10),
            ("label distillation, 20 base images", "labels", {"base": 20}, 5),
            ("DM (the pick for a CPU), 10 per class", "dm", {}, 3))  # fmt: skip
    dirs: list[Path] = []
    for name, method, options, repeats in runs:
        t0 = time.perf_counter()
        run_dir = Path(out) / f"{method}-{options.get('init', 'default')}"
        syn = ds.distill(method, data, out=run_dir, overwrite=True, **options)  # a rerun replaces the demo's runs
        res = ds.evaluate(syn, data, repeats=repeats, seed=100)
        ds.record_evaluation(run_dir, res)
        dirs.append(run_dir)
        print(_row(name, len(syn), res, time.perf_counter() - t0), flush=True)
        if method == "labels":  # the same images with their one-hot labels, by the same recipe
            twin = ds.SyntheticSet(syn.images, torch.tensor(syn.extra["base_classes"]), syn.class_names, syn.norm,
                                   recipe=syn.recipe)  # fmt: skip
            print(_row("  the same 20 images, one-hot labels", len(twin), ds.evaluate(twin, data, repeats=5, seed=100),
                       0.0), flush=True)  # fmt: skip
        if method == "dm":  # random real images of the same count, the same net and recipe (DSA)
            real = ds.baseline("random", data, ipc=10)
            real.recipe, real.net = syn.recipe, syn.net
            print(_row("  random real, same net and recipe", len(real), ds.evaluate(real, data, repeats=3, seed=100),
                       0.0), flush=True)  # fmt: skip
    for ipc in (10, 2):  # DM's and DD's image counts
        t0 = time.perf_counter()
        syn = ds.baseline("random", data, ipc=ipc)
        res = ds.evaluate(syn, data, net="mlp", repeats=5)
        run_dir = prepare_out(Path(out) / f"random-ipc{ipc}", overwrite=True)
        syn.save(run_dir)
        ds.record_evaluation(run_dir, res)
        dirs.append(run_dir)
        print(_row(f"random real (IPC {ipc}), MLP", len(syn), res, time.perf_counter() - t0), flush=True)
    page = ds.report(dirs, Path(out) / "report.html", title="distilset demo: digits with default flags")
    print(f"\nsets, grid.png pictures and history.json in {out}/; rerun an evaluation and record it with:")
    print(f"  distilset evaluate {out}/dd-random --repeats 10 --save")
    print(f"the report (pictures, learning curves, evaluations): {page}")


if __name__ == "__main__":
    main()
