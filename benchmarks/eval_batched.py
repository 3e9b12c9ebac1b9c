"""Does training the R evaluation nets at once (torch.func.vmap over stacked parameters) beat one by one?

Trains R ConvNet-3 nets on one small set with the standard protocol's SGD (momentum 0.9, wd 5e-4, lr 0.01,
batch 256) both ways from the same inits and batch orders, checks they reach the same weights, and times them.

    .venv/bin/python benchmarks/eval_batched.py [--repeats 5] [--ipc 10] [--epochs 50] [--width 32]

The row (with its command line) goes to benchmarks/results/eval_batched.json (``--results DIR``: elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from _common import RESULTS, command_line, machine
from torch.func import functional_call, grad, stack_module_state, vmap

import distilset as ds
from distilset.io import write_json
from distilset.losses import soft_cross_entropy
from distilset.nets import create_net


def orders(n: int, epochs: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        out += [perm[i : i + batch] for i in range(0, n, batch)]
    return out


def sgd_update(p, g, buf, lr, momentum=0.9, wd=5e-4):
    d = g + wd * p
    buf = d if buf is None else momentum * buf + d
    return p - lr * buf, buf


def sequential(nets, x, y, batches, epochs, lr):
    per_epoch = len(batches[0]) // epochs
    for net, order in zip(nets, batches, strict=True):
        opt = torch.optim.SGD(net.parameters(), lr, momentum=0.9, weight_decay=5e-4)
        for step, idx in enumerate(order):
            if step == (epochs // 2) * per_epoch:
                opt.param_groups[0]["lr"] = lr * 0.1
            loss = soft_cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [dict(n.named_parameters()) for n in nets]


def batched(nets, x, y, batches, epochs, lr):
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")

    def loss_fn(p, b, xb, yb):
        return soft_cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    step_grad = vmap(grad(loss_fn))
    bufs = {k: None for k in params}
    per_epoch = len(batches[0]) // epochs
    for step in range(len(batches[0])):
        xb = torch.stack([x[order[step]] for order in batches])
        yb = torch.stack([y[order[step]] for order in batches])
        grads = step_grad(params, buffers, xb, yb)
        rate = lr * (0.1 if step >= (epochs // 2) * per_epoch else 1.0)
        for k in params:
            params[k], bufs[k] = sgd_update(params[k], grads[k], bufs[k], rate)
    return [{k: v[r] for k, v in params.items()} for r in range(len(nets))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = ds.load_dataset("mnist5k")
    syn = ds.baseline("random", data, ipc=args.ipc)
    x, y = syn.images, syn.labels
    batches = [orders(len(x), args.epochs, 256, seed=s) for s in range(args.repeats)]

    def fresh():
        return [create_net("convnet", (1, 28, 28), 10, seed=s, width=args.width) for s in range(args.repeats)]

    t0 = time.perf_counter()
    seq = sequential(fresh(), x, y, batches, args.epochs, 0.01)
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    bat = batched(fresh(), x, y, batches, args.epochs, 0.01)
    t_bat = time.perf_counter() - t0
    diff = max(float((a[k].detach() - b[k].detach()).abs().max()) for a, b in zip(seq, bat, strict=True) for k in a)
    settings = {k: v for k, v in vars(args).items() if k != "results"}
    row = {**settings, "sequential_s": round(t_seq, 2), "vmap_s": round(t_bat, 2), "max_weight_diff": diff,
           "machine": machine(), "command": command_line()}  # fmt: skip
    print(json.dumps(row))
    write_json(args.results / "eval_batched.json", row)


if __name__ == "__main__":
    main()
