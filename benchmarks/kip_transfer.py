"""The learning rate of KIP's finite-net transfer recipe (``recipes.KIP_TRANSFER``), which KIP's notebooks leave
unstated: a digits KIP set (default flags) and its random real twin, on the MLP the dense kernel describes (width
1024), by the transfer recipe at each lr; 2 fresh nets each (results/kip-transfer.json).

    .venv/bin/python benchmarks/kip_transfer.py
"""

from __future__ import annotations

import dataclasses
import time

import torch
from _common import RESULTS, ResultFile, command_line

import distilset as ds
from distilset.recipes import KIP_TRANSFER

OUT = RESULTS / "kip-transfer.json"
LRS = (0.01, 0.03, 0.1)


def main() -> None:
    torch.set_num_threads(2)
    data = ds.load_dataset("digits")
    t0 = time.perf_counter()
    syn = ds.distill("kip", data)
    real = ds.random_real_like(syn, data)
    results = ResultFile(OUT, {"what": "KIP transfer lr", "repeats": 2})
    results.data["rows"] = []
    for lr in LRS:
        recipe = dataclasses.asdict(dataclasses.replace(KIP_TRANSFER, lr=lr))
        row = {"lr": lr, "recipe": recipe, "command": command_line()}
        for name, s in (("kip", syn), ("random_real", real)):
            r = ds.evaluate(s, data, protocol="standard", repeats=2, seed=100, lr=lr)
            row[name] = {"mean": r.accuracy_mean, "std": r.accuracy_std, "net": r.net, "net_kwargs": r.net_kwargs}
        print(f"lr {lr:g}: KIP {100 * row['kip']['mean']:.1f} %, random real {100 * row['random_real']['mean']:.1f} %")
        results.add(row)
    print(f"{time.perf_counter() - t0:.0f} s; wrote {OUT}")


if __name__ == "__main__":
    main()
