"""``make demo``: distill the embedded ``digits`` set with Dataset Distillation and compare with real images.

Prints one table: DD (fixed and random init, 100 images = 10 steps x 10 classes x 1, 3 epochs, 400 outer
iterations, MLP) scored by replaying its recipe, next to baselines of the same size scored by the standard
protocol with the same MLP. Takes about a minute on 2 CPU cores; sets and pictures land in out/demo/.
"""

from __future__ import annotations

import time
from pathlib import Path

import distilset as ds
from distilset.methods.presets import PRESETS


def _row(name: str, images: int, res: ds.EvalResult, seconds: float) -> str:
    acc = f"{100 * res.accuracy_mean:.1f} ± {100 * res.accuracy_std:.1f}"
    return f"| {name:<28} | {images:>6} | {acc:>13} | {res.protocol:<8} | {res.repeats:>4} | {seconds:>6.1f} |"


def main(out: str = "out/demo") -> None:
    data = ds.load_dataset("digits")
    print(f"{data}\n")
    print(f"| {'set':<28} | {'images':>6} | {'test acc (%)':>13} | {'protocol':<8} | {'nets':>4} | {'time s':>6} |")
    print(f"|{'-' * 30}|{'-' * 8}|{'-' * 15}|{'-' * 10}|{'-' * 6}|{'-' * 8}|")
    for preset, repeats in (("dd-digits-fixed", 1), ("dd-digits-random", 10)):
        t0 = time.perf_counter()
        p = PRESETS[preset]
        syn = ds.distill("dd", data, iterations=p.iterations, out=Path(out) / preset, **p.options)
        res = ds.evaluate(syn, data, repeats=repeats, seed=100)
        print(_row(f"DD, {p.options['init']} init", len(syn), res, time.perf_counter() - t0), flush=True)
    for name in ("random", "kmeans"):
        t0 = time.perf_counter()
        syn = ds.baseline(name, data, ipc=10)
        syn.save(Path(out) / name)
        res = ds.evaluate(syn, data, net="mlp", repeats=5, epochs=300)
        print(_row(f"{name} real (IPC 10)" if name == "random" else "k-means (IPC 10)", len(syn), res,
                   time.perf_counter() - t0), flush=True)  # fmt: skip
    print(f"\nsets, grid.png pictures and history.json in {out}/; rerun an evaluation with:")
    print(f"  distilset evaluate {out}/dd-digits-random --repeats 10")


if __name__ == "__main__":
    main()
