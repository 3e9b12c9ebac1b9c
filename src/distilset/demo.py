"""``make demo``: distill the embedded ``digits`` set with default flags and score each set like for like.

Three methods run with nothing but their defaults (resolved from the dataset: an MLP for 8x8 inputs, the
paper's decay period, ...): Dataset Distillation (learned images and per-step learning rates, replayed from a
fixed init), label distillation (learned soft labels on real images) and KIP (images learned for kernel ridge
regression). Each set is scored by its own training recipe, next to random real images of the same count
trained by the same recipe and net (``distilset.random_real_like``): the same fixed init and learned steps for
DD, the same optimiser and steps with one-hot labels for label distillation, the same kernel for KIP.
About a minute on 2 CPU cores (``benchmarks/demo.py`` times it); sets, pictures and their recorded
evaluations land in out/demo/, and the demo ends by writing out/demo/report.html over all of them.
"""

from __future__ import annotations

import time
from pathlib import Path

import distilset as ds
from distilset.rundir import prepare_out, releases_locks

RUNS = (  # (row name, method, evaluation repeats): a fixed-init replay and kernel regression are deterministic
    ("Dataset Distillation", "dd", 1),
    ("label distillation", "labels", 5),
    ("KIP (kernel inducing points)", "kip", 1),
)


def _pct(res: ds.EvalResult) -> str:
    return f"{100 * res.accuracy_mean:.1f} ± {100 * res.accuracy_std:.1f}"


@releases_locks
def main(out: str = "out/demo") -> list[dict]:
    """Run the demo into ``out``; returns the table's rows (what ``benchmarks/demo.py`` records)."""
    data = ds.load_dataset("digits")
    print(f"{data}\n")
    print(
        f"| {'set (default flags)':<28} | {'images':>6} | {'distilled %':>11} | {'random real %':>13} | "
        f"{'time s':>6} | recipe (the same for both)"
    )
    print(f"|{'-' * 30}|{'-' * 8}|{'-' * 13}|{'-' * 15}|{'-' * 8}|{'-' * 27}")
    dirs: list[Path] = []
    rows = []
    for name, method, repeats in RUNS:
        t0 = time.perf_counter()
        run_dir = Path(out) / method
        syn = ds.distill(method, data, out=run_dir, overwrite=True)  # a rerun replaces the demo's own runs
        res = ds.evaluate(syn, data, repeats=repeats, seed=100)
        ds.record_evaluation(run_dir, res)
        real = ds.random_real_like(syn, data)
        real_res = ds.evaluate(real, data, repeats=repeats, seed=100)
        real_dir = prepare_out(Path(out) / f"{method}-random-real", overwrite=True)
        real.save(real_dir)
        ds.record_evaluation(real_dir, real_res)
        dirs += [run_dir, real_dir]
        seconds = time.perf_counter() - t0
        recipe = f"{syn.recipe.describe()}; {res.net}"
        print(
            f"| {name:<28} | {len(syn):>6} | {_pct(res):>11} | {_pct(real_res):>13} | {seconds:>6.1f} | {recipe}",
            flush=True,
        )
        rows.append(
            {
                "set": name,
                "method": method,
                "images": len(syn),
                "recipe": recipe,
                "repeats": repeats,
                "distilled": res.accuracy_mean,
                "distilled_std": res.accuracy_std,
                "random_real": real_res.accuracy_mean,
                "random_real_std": real_res.accuracy_std,
                "seconds": round(seconds, 1),
            }
        )
    page = ds.report(dirs, Path(out) / "report.html", title="distilset demo: digits with default flags")
    print(f"\nsets, grid.png pictures and history.json in {out}/; score a set again and record it with:")
    print(f"  distilset evaluate {out}/labels --repeats 10 --save")
    print(f"the report (pictures, learning curves, evaluations): {page}")
    return rows


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:2])
