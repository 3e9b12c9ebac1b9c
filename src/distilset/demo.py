"""``make demo``: build every baseline on the embedded ``digits`` set and score it with the harness.

Prints a table of test accuracies (ConvNet-3, standard protocol, CPU-sized 100 epochs, 3 nets each).
"""

from __future__ import annotations

import time
from pathlib import Path

import distilset as ds


def main(out: str = "out/demo", ipc: int = 10, epochs: int = 100, repeats: int = 3) -> None:
    data = ds.load_dataset("digits")
    print(f"{data}\nbaselines at {ipc} images per class, ConvNet-3, {epochs} epochs, {repeats} nets each:\n")
    print(f"| {'set':<10} | {'images':>6} | {'test accuracy (%)':>18} | {'time (s)':>8} |")
    print(f"|{'-' * 12}|{'-' * 8}|{'-' * 20}|{'-' * 10}|")
    for name in ("random", "mean", "kmeans", "herding"):
        t0 = time.perf_counter()
        syn = ds.baseline(name, data, ipc=ipc)
        syn.save(Path(out) / name)
        res = ds.evaluate(syn, data, repeats=repeats, epochs=epochs)
        acc = f"{100 * res.accuracy_mean:.1f} ± {100 * res.accuracy_std:.1f}"
        print(f"| {name:<10} | {len(syn):>6} | {acc:>18} | {time.perf_counter() - t0:>8.1f} |")
    print(
        f"\nsets and grid.png pictures in {out}/; evaluate one with: distilset evaluate {out}/kmeans --epochs {epochs}"
    )


if __name__ == "__main__":
    main()
