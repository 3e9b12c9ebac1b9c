"""Dataset Distillation benchmark: reproduction rows, adaptation, and speed/memory of the unroll.

    .venv/bin/python benchmarks/dd.py --part reproduce --dataset mnist5k      # paper rows on mnist5k
    .venv/bin/python benchmarks/dd.py --part reproduce --dataset fashion-mnist
    .venv/bin/python benchmarks/dd.py --part adapt                           # fashion 0-4 pool -> 10 classes
    .venv/bin/python benchmarks/dd.py --part speed                           # T = 10, 30, 100
    .venv/bin/python benchmarks/dd.py --table

Rows go to benchmarks/results/dd-<part>-<dataset>.json as they finish, each with its command line (rerunning
skips finished rows); ``--table`` merges them into benchmarks/results/dd.json. ``--results DIR`` reads and
writes another directory; ``--smoke`` runs tiny budgets into /tmp/distilset-bench-smoke. Iteration budgets
are the CPU presets' (``get_method("dd").presets``: dd-*-fixed 3000, dd-*-random 1000), far below the paper's
~23,400; the accuracy-vs-iteration history of each row is stored so the gap can be read off the curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import RESULTS, HeapPeak, ResultFile

import distilset as ds
from distilset.errors import DistilsetError
from distilset.io import write_json
from distilset.methods.base import Context
from distilset.methods.dd import DatasetDistillation, DDConfig, pretrain_pool
from distilset.nets import create_net
from distilset.train import accuracy, replay

PRESETS = ds.get_method("dd").presets

# Full MNIST: Wang et al. 2018 (the authors' project page) for fixed10 / random100; Sucholutsky & Schonlau 2021
# (abstract: "over 96 %" with 10 images, "almost 92 %" with 5) for the soft-label rows, shown as such.
PAPER = {"fixed10": 93.8, "random100": 79.5, "soft10": 96.0, "soft5": 92.0}
PAPER_SHOWN = {"soft10": "over 96", "soft5": "almost 92"}
SHORT = {"mnist5k": "mnist5k", "fashion-mnist": "fashion"}  # datasets with dd-<short>-fixed/-random presets
SMOKE = False  # --smoke: tiny budgets, results under /tmp, to check the script end to end


def _history_curve(history: list[dict]) -> list[list[float]]:
    return [[r["iteration"], round(100 * r["val_acc"], 2)] for r in history if "val_acc" in r]


def _distill_row(data, options: dict, iterations: int, eval_every: int, repeats: int, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    iterations, eval_every = (2, 1) if SMOKE else (iterations, eval_every)
    data, validation = data.validation_split()  # the curve scores held-out training images, never the test split
    dd = DatasetDistillation(data, DDConfig(**options), Context(seed=seed))
    history = []
    for it in range(iterations):
        m = dd.step(it)
        if (it + 1) % eval_every == 0 or it + 1 == iterations:
            m.update(dd.quick_eval(validation, 2))
            m["iteration"] = it + 1
            history.append(m)
            print(f"  it {it + 1}: loss {m['loss']:.3f} validation acc {100 * m['val_acc']:.1f}", flush=True)
    distill_s = time.perf_counter() - t0
    syn = dd.synthetic_set()
    res = ds.evaluate(syn, data, protocol="recipe", repeats=repeats, seed=1000)
    try:  # learned soft labels may hold negative mass, which makes plain cross-entropy training unbounded
        std = ds.evaluate(syn, data, protocol="standard", repeats=3, epochs=2 if SMOKE else 300)
        standard = {"standard_mean": std.accuracy_mean, "standard_std": std.accuracy_std}
    except DistilsetError as e:
        standard = {"standard_mean": None, "standard_std": None, "standard_error": str(e)}
    return {
        "images": len(syn),
        "iterations": iterations,
        "distill_s": round(distill_s, 1),
        "accuracy_mean": res.accuracy_mean,
        "accuracy_std": res.accuracy_std,
        "runs": res.runs,
        **standard,
        "curve": _history_curve(history),
        "options": {k: v for k, v in options.items() if k != "net_kwargs"},
        "config": dd.cfg.to_json(),
    }


def reproduce(name: str, results: ResultFile, args: argparse.Namespace) -> None:
    data = ds.load_dataset(name)
    short = SHORT[name]
    fixed, random_ = PRESETS[f"dd-{short}-fixed"], PRESETS[f"dd-{short}-random"]
    fixed_its = args.fixed_iterations or fixed.iterations
    random_its = args.random_iterations or random_.iterations
    rows = {
        "fixed10": (fixed.options, fixed_its, 1),
        "soft10": ({**fixed.options, "soft_labels": True}, fixed_its, 1),
        "soft5": ({**fixed.options, "soft_labels": True, "items": 5, "label_init": "random"}, fixed_its, 1),
        "random100": (random_.options, random_its, 10),
    }
    rows = {k: v for k, v in rows.items() if k in args.rows}
    for row, (options, iterations, repeats) in rows.items():
        key = {"part": "reproduce", "dataset": name, "row": row}
        if results.has(key):
            continue
        print(f"{name} {row}", flush=True)
        out = _distill_row(data, options, iterations, eval_every=250, repeats=repeats)
        results.add({**key, **out, "paper": PAPER[row]})
    key = {"part": "reproduce", "dataset": name, "row": "attack"}
    if "attack" in args.rows and not results.has(key):
        print(f"{name} attack 0->1", flush=True)
        results.add({**key, **attack(data)})
    for method in ("random", "mean", "kmeans") if "baselines" in args.rows else ():
        for ipc in (1, 10):
            key = {"part": "reproduce", "dataset": name, "row": f"{method}-ipc{ipc}"}
            if results.has(key):
                continue
            syn = ds.baseline(method, data, ipc=ipc)
            res = ds.evaluate(syn, data, net="lenet", protocol="standard", repeats=5, epochs=2 if SMOKE else 300)
            results.add(
                {
                    **key,
                    "images": len(syn),
                    "accuracy_mean": res.accuracy_mean,
                    "accuracy_std": res.accuracy_std,
                    "runs": res.runs,
                    "eval_s": round(res.wall_time_s, 1),
                }
            )
            print(f"{name} {method} ipc {ipc}: {100 * res.accuracy_mean:.1f}", flush=True)


def attack(data, iterations: int = 400) -> dict:
    """Poisoning: one step on 10 distilled images should make pretrained nets misread class 0 as class 1."""
    t0 = time.perf_counter()
    iterations = 2 if SMOKE else iterations
    cfg = DDConfig(net="lenet", net_init="fixed-pretrained", steps=1, epochs=1, attack=(0, 1), pretrain_epochs=2)
    dd = DatasetDistillation(data, cfg, Context(seed=0))
    for it in range(iterations):
        dd.step(it)
    syn = dd.synthetic_set()
    held_out = pretrain_pool(data, dd.cfg, 3, seed=555)  # nets the attack never saw
    rows = []
    for state in [dd.pool[0], *held_out]:
        net = create_net("lenet", data.image_shape, data.num_classes)
        net.load_state_dict(state)
        mask = data.test_y == 0
        before = accuracy(net, data.test_x[mask], data.test_y[mask])
        replay(net, syn.images, syn.labels, syn.lrs, syn.step_order)
        with torch.no_grad():
            to_target = float((net(data.test_x[mask]).argmax(1) == 1).float().mean())
        rows.append(
            {
                "before": before,
                "after": accuracy(net, data.test_x[mask], data.test_y[mask]),
                "to_target": to_target,
                "others_after": accuracy(net, data.test_x[~mask], data.test_y[~mask]),
            }
        )
    return {
        "iterations": iterations,
        "distill_s": round(time.perf_counter() - t0, 1),
        "config": dd.cfg.to_json(),
        "seen_net": rows[0],
        "held_out": rows[1:],
    }


def adapt(results: ResultFile, iterations: int = 1000) -> None:
    """Adaptation: nets pretrained on Fashion-MNIST classes 0-4 adapt to all 10 classes from 100 distilled images."""
    name = "digits" if SMOKE else "fashion-mnist"
    iterations = 2 if SMOKE else iterations
    key = {"part": "adapt", "dataset": name, "row": "random-pretrained"}
    if results.has(key):
        return
    data = ds.load_dataset(name)
    opts = {
        "net": "lenet",
        "net_init": "random-pretrained",
        "steps": 10,
        "epochs": 3,
        "pool_size": 4,
        "pretrain_classes": (0, 1, 2, 3, 4),
        "pretrain_epochs": 1,
    }
    t0 = time.perf_counter()
    dd = DatasetDistillation(data, DDConfig(**opts), Context(seed=0))
    for it in range(iterations):
        dd.step(it)
    syn = dd.synthetic_set()
    held_out = pretrain_pool(data, dd.cfg, 4, seed=777, classes=(0, 1, 2, 3, 4))
    before = [accuracy(_load(state, data), data.test_x, data.test_y) for state in held_out]
    res = ds.evaluate(syn, data, protocol="recipe", repeats=4, init_pool=held_out)
    real = ds.evaluate(random_real_replay(data, syn), data, protocol="recipe", repeats=4, init_pool=held_out)
    results.add(
        {
            **key,
            "images": len(syn),
            "iterations": iterations,
            "distill_s": round(time.perf_counter() - t0, 1),
            "before": before,
            "accuracy_mean": res.accuracy_mean,
            "accuracy_std": res.accuracy_std,
            "random_real_mean": real.accuracy_mean,
            "random_real_std": real.accuracy_std,
            "config": dd.cfg.to_json(),
        }
    )


def random_real_replay(data, syn: ds.SyntheticSet, lr: float = 0.02) -> ds.SyntheticSet:
    """100 random real images (10 per class) replayed by the distilled set's recipe: its step order, its init
    regime and net, every step at ``lr``. The real images are arranged so that each step holds the same
    classes as the distilled set's step (the baseline draws them class after class)."""
    rr = ds.baseline("random", data, ipc=10)
    rank = torch.empty_like(rr.labels)
    for c in rr.labels.unique():
        members = (rr.labels == c).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    order = torch.argsort(rank * data.num_classes + rr.labels)  # 1st of every class, then 2nd of every class ...
    if not torch.equal(rr.labels[order], syn.labels):
        raise DistilsetError("the distilled set's items are not one per class per step; cannot mirror its steps")
    return dataclasses.replace(rr, images=rr.images[order], labels=rr.labels[order], recipe=syn.recipe,
                               lrs=torch.full_like(syn.lrs, lr), step_order=syn.step_order.clone(),
                               net=syn.net)  # fmt: skip


def _load(state, data):
    net = create_net("lenet", data.image_shape, data.num_classes)
    net.load_state_dict(state)
    return net


# --- speed and memory --------------------------------------------------------------------------------------


def plain_lenet_forward(w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """LeNet written out by hand over a weight list: the deliberately plain baseline."""
    x = F.max_pool2d(F.relu(F.conv2d(x, w[0], w[1], padding=2)), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, w[2], w[3])), 2).flatten(1)
    x = F.relu(F.linear(x, w[4], w[5]))
    x = F.relu(F.linear(x, w[6], w[7]))
    return F.linear(x, w[8], w[9])


def one_speed_config(steps: int, mode: str, iterations: int = 3) -> dict:
    """Run in a fresh process: seconds and peak memory per outer iteration for T = steps (epochs 1).

    One warm-up iteration, then ``iterations`` measured ones: the fastest time, the peak C-heap bytes in use
    above the level before them (tensor memory, see HeapPeak) and the process's peak RSS.
    """
    torch.set_num_threads(1)
    data = ds.load_dataset("mnist5k")
    memory = "checkpoint" if mode == "checkpoint" else "plain"
    cfg = DDConfig(net="lenet", net_init="fixed", steps=steps, epochs=1, memory=memory)
    dd = DatasetDistillation(data, cfg, Context(seed=0))
    run_one = (lambda it: _plain_iteration(dd)) if mode == "hand-written" else dd.step
    run_one(0)
    times = []
    with HeapPeak() as heap:
        for it in range(1, iterations + 1):
            t0 = time.perf_counter()
            run_one(it)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"T": steps, "mode": mode, "s_per_iter": min(times), "iteration_mb": round(heap.mb, 1),
            "peak_rss_mb": round(peak, 1)}  # fmt: skip


def _plain_iteration(dd: DatasetDistillation) -> None:
    """The classic loop: copy the module, unroll with autograd.grad(create_graph=True), backward, Adam."""
    import copy

    module = copy.deepcopy(dd.model)
    weights = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x_real, y_real = dd._real_batch()
    for t in range(dd.cfg.total_steps):
        x, y, lr = dd._step_fn(t)
        loss = F.cross_entropy(plain_lenet_forward(weights, x), y)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        weights = [w - lr * g for w, g in zip(weights, grads, strict=True)]
    outer = F.cross_entropy(plain_lenet_forward(weights, x_real), y_real)
    dd.optimizer.zero_grad()
    outer.backward()
    dd.optimizer.step()


def speed(results: ResultFile) -> None:
    for steps in (10, 30, 100):
        for mode in ("hand-written", "plain", "checkpoint"):
            key = {"part": "speed", "T": steps, "mode": mode}
            if results.has(key):
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--speed-one", str(steps), mode], capture_output=True, text=True, check=True
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results.add({**key, **row})
            print(row, flush=True)


# --- table -------------------------------------------------------------------------------------------------


def merge() -> list[dict]:
    """Collect the per-part result files into benchmarks/results/dd.json."""
    parts = sorted(RESULTS.glob("dd-*.json"))
    merged = {"parts": {}, "rows": []}
    for path in parts:
        data = json.loads(path.read_text())
        merged["parts"][path.name] = data["machine"]
        merged["rows"] += data["rows"]
    write_json(RESULTS / "dd.json", merged)
    return merged["rows"]


def _standard_cell(r: dict) -> str:
    if r.get("standard_mean") is None:
        return "diverges (negative label mass)"
    return f"{100 * r['standard_mean']:.1f} ± {100 * r['standard_std']:.1f}"


def table() -> str:
    order = {"mnist5k": 0, "fashion-mnist": 1}
    rows = sorted(merge(), key=lambda r: order.get(r.get("dataset"), 2))
    out = [
        "| dataset | setting | images | recipe accuracy (%) | standard (%) | paper, MNIST (%) | budget |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "fixed10": "fixed init",
        "soft10": "fixed init, soft labels",
        "soft5": "fixed init, soft labels, 5 items",
        "random100": "random init (10 inits)",
    }
    for r in rows:
        if r["part"] == "reproduce" and r["row"] in names:
            paper = PAPER_SHOWN.get(r["row"], r["paper"]) if r["dataset"] == "mnist5k" else "-"
            out.append(
                f"| {r['dataset']} | {names[r['row']]} | {r['images']} | {100 * r['accuracy_mean']:.1f} ± "
                f"{100 * r['accuracy_std']:.1f} | {_standard_cell(r)} | "
                f"{paper} | {r['iterations']} it, "
                f"{r['distill_s'] / 60:.0f} min |"
            )
        elif r["part"] == "reproduce" and "-ipc" in r["row"]:
            out.append(
                f"| {r['dataset']} | baseline {r['row']} (LeNet, standard) | {r['images']} | - | "
                f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} | | |"
            )
    for r in rows:
        if r["part"] == "reproduce" and r["row"] == "attack":
            held = ", ".join(f"{100 * x['before']:.0f} -> {100 * x['after']:.0f} (other classes "
                             f"{100 * x['others_after']:.0f})" for x in r["held_out"])  # fmt: skip
            seen = r["seen_net"]
            out.append(
                f"\nPoisoning ({r['dataset']}, class 0 -> 1, 10 images, one step, {r['iterations']} it): class-0 "
                f"accuracy of the attacked net {100 * seen['before']:.1f} -> {100 * seen['after']:.1f} % "
                f"({100 * seen['to_target']:.1f} % read as 1, other classes {100 * seen['others_after']:.1f} %); "
                f"held-out pretrained nets, class 0: {held} %."
            )
        if r["part"] == "adapt":
            out.append(
                f"\nAdaptation (Fashion-MNIST, pool pretrained on classes 0-4, 100 images, {r['iterations']} it): "
                f"held-out pretrained nets {100 * sum(r['before']) / len(r['before']):.1f} % -> "
                f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} % after 30 steps on the distilled "
                f"images (100 random real images, same steps at lr 0.02: {100 * r['random_real_mean']:.1f} ± "
                f"{100 * r['random_real_std']:.1f} %)."
            )
    speed_rows = [r for r in rows if r["part"] == "speed"]
    if speed_rows:
        out += [
            "",
            "| T | hand-written loop s/it | engine plain s/it | engine checkpoint s/it | peak tensor memory, MB "
            "(hand / plain / checkpoint) |",
            "|---|---|---|---|---|",
        ]
        for t in (10, 30, 100):
            by = {r["mode"]: r for r in speed_rows if r["T"] == t}
            if len(by) == 3:
                out.append(
                    f"| {t} | {by['hand-written']['s_per_iter']:.2f} | {by['plain']['s_per_iter']:.2f} | "
                    f"{by['checkpoint']['s_per_iter']:.2f} | {by['hand-written']['iteration_mb']:.0f} / "
                    f"{by['plain']['iteration_mb']:.0f} / {by['checkpoint']['iteration_mb']:.0f} |"
                )
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["reproduce", "adapt", "speed"])
    p.add_argument("--dataset", default="mnist5k", choices=sorted(SHORT))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true")
    p.add_argument("--speed-one", nargs=2, metavar=("T", "MODE"))
    p.add_argument("--rows", nargs="+", default=["fixed10", "soft10", "soft5", "random100", "attack", "baselines"])
    p.add_argument("--fixed-iterations", type=int, default=None, help="budget of fixed-init rows (preset's)")
    p.add_argument("--random-iterations", type=int, default=None, help="budget of the random-init row (preset's)")
    p.add_argument("--smoke", action="store_true", help="tiny budgets, results in /tmp (checks the script)")
    p.add_argument("--results", type=Path, default=None, help="results directory (default benchmarks/results)")
    args = p.parse_args()
    if args.results is not None:
        RESULTS = args.results
    if args.smoke:
        SMOKE, RESULTS = True, args.results or Path("/tmp/distilset-bench-smoke")
    torch.set_num_threads(args.threads)
    if args.speed_one:
        print(json.dumps(one_speed_config(int(args.speed_one[0]), args.speed_one[1])))
    elif args.table:
        print(table())
    else:
        results = ResultFile(
            RESULTS / f"dd-{args.part}-{args.dataset if args.part == 'reproduce' else 'all'}.json", {"version": 1}
        )
        {
            "reproduce": lambda: reproduce(args.dataset, results, args),
            "adapt": lambda: adapt(results),
            "speed": lambda: speed(results),
        }[args.part]()
