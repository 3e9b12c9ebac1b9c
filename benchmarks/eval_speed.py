"""How long an evaluation takes, today against a baseline commit, and whether bfloat16 keeps the accuracy.

    git worktree add --detach /tmp/distilset-main <commit>       # the baseline: e.g. main before the change
    .venv/bin/python benchmarks/eval_speed.py --baseline-tree /tmp/distilset-main
    .venv/bin/python benchmarks/eval_speed.py --rows levers      # one row (levers, eval-dsa, eval-parity)

Rows (each replaces its earlier result in ``benchmarks/results/eval-speed.json``; 2 threads unless ``--threads``):

- ``eval-dsa``: the evaluation a DSA or DM set gets: 100 random real Fashion-MNIST images (10 per class, seed 0)
  trained by DC's protocol with DSA (SGD 0.01, momentum 0.9, 1000 epochs, the full strategy) on the set's default
  net (ConvNet-3, width 128, instance norm), then tested on the 10,000 test images, for 3 nets (seeds 0-2), with
  default options: ``distilset.evaluate(syn, data, protocol="standard", dsa=..., repeats=1, seed=s)``. Each net is
  one fresh process: of the baseline tree (``PYTHONPATH=TREE/src``) and of this tree, alternating (baseline,
  this, this, baseline, baseline, this), so that the machine's drift does not enter the ratio. The row keeps
  each net's wall time (the call, not the process start) and accuracy; their ratio; and whether the two arms'
  mean accuracies differ by less than the larger of their population stds (parity).
- ``levers``: what each change does to one training step of that workload (100 images, fp32 or bfloat16
  autocast, glibc's allocator as it is or tuned by ``distilset.runtime.tune_allocator``; and bfloat16 with the
  input laid out channels-last, as the baseline's DSA crop returned it, so that the whole net ran channels-last):
  the median of 20 steps per arm, arms alternating step by step in one process; and the test pass (10,000
  images) as the baseline ran it (the forward under autograd) and as ``distilset.train.accuracy`` runs it now.
- ``eval-parity``: the accuracy-parity row deciding ``precision="auto"``: 100 random real mnist5k images by DC's
  protocol without DSA (300 epochs) and 100 random real Fashion-MNIST images by the Adam recipe (lr 1e-3, 300
  epochs) on ConvNet-3, 5 nets each (seeds 0-4) in float32 and in bfloat16 (this tree, tuned allocator):
  mean, std and the difference of means against the larger std.
- ``dm-parity``: the accuracy-parity row for DM's ``precision`` (its real batches embedded in bfloat16): DM with
  default flags on digits and on mnist5k at 100 iterations, once in float32 and once in bfloat16 (same seed), each
  set then evaluated by its recipe (digits 5 nets, mnist5k 3, seed 100, the default evaluation); distillation time
  and accuracy of both, and whether the means differ by less than the larger std.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile, command_line

import distilset as ds
from distilset.augment import dsa
from distilset.nets import create_net
from distilset.runtime import autocast, tune_allocator
from distilset.train import accuracy

OUT = RESULTS / "eval-speed.json"
SETTINGS = {"benchmark": "eval-speed", "version": 1}
DSA = "color_crop_cutout_flip_scale_rotate"
ROWS = ("levers", "eval-parity", "eval-dsa", "dm-parity")
CHANNELS_LAST = "bfloat16, input channels-last (the baseline's DSA crop)"
SRC = Path(__file__).resolve().parents[1] / "src"

# one net of eval-dsa, run as its own process by either tree; prints one JSON line
ONE_NET = """
import json, sys, time, torch
import distilset as ds
torch.set_num_threads({threads})
data = ds.load_dataset("fashion-mnist")
syn = ds.baseline("random", data, ipc=10, seed=0)
t0 = time.perf_counter()
r = ds.evaluate(syn, data, protocol="standard", dsa="{dsa}", repeats=1, seed={seed})
print(json.dumps({{"s": time.perf_counter() - t0, "acc": r.accuracy_mean, "settings": r.settings}}))
"""


def _net_in(tree: Path, seed: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("DISTILSET_ALLOCATOR", None)
    code = ONE_NET.format(threads=threads, dsa=DSA, seed=seed)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()


def eval_dsa(baseline: Path, threads: int) -> dict:
    arms = {"baseline": baseline / "src", "this": SRC}
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    order = [("baseline", "this"), ("this", "baseline"), ("baseline", "this")]
    for seed, pair in enumerate(order):
        for arm in pair:
            r = _net_in(arms[arm], seed, threads)
            runs[arm].append({"seed": seed, "s": round(r["s"], 1), "acc": r["acc"], "settings": r["settings"]})
            print(f"eval-dsa {arm} seed {seed}: {r['s']:.1f} s, {100 * r['acc']:.2f} %", flush=True)
    summary = {arm: _summary([x["s"] for x in rs], [x["acc"] for x in rs]) for arm, rs in runs.items()}
    b, t = summary["baseline"], summary["this"]
    return {
        "row": "eval-dsa",
        "baseline_commit": _git(baseline, "rev-parse", "HEAD"),
        "this_commit": _this_commit(),
        "runs": runs,
        "summary": summary,
        "time_ratio": round(t["s_mean"] / b["s_mean"], 3),
        "speedup": round(b["s_mean"] / t["s_mean"], 2),
        "parity": abs(t["acc_mean"] - b["acc_mean"]) <= max(t["acc_std"], b["acc_std"]),
    }


def _this_commit() -> str:
    modified = " (modified)" if _git(SRC.parent, "status", "--porcelain", "src") else ""
    return _git(SRC.parent, "rev-parse", "HEAD") + modified


def _summary(seconds: list[float], accs: list[float]) -> dict:
    return {
        "s_mean": round(statistics.fmean(seconds), 1),
        "acc_mean": statistics.fmean(accs),
        "acc_std": statistics.pstdev(accs),
    }


def _main_accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """The test pass as the baseline ran it: eval mode, but the forward under autograd (a graph per batch)."""
    net.eval()
    correct = sum(
        (net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    net.train()
    return correct / len(x)


def _levers_here(steps: int) -> dict:
    """One process of the levers row, its allocator as ``DISTILSET_ALLOCATOR`` says: the two precisions' training
    steps, alternating, and the test pass as the baseline ran it and as it runs now."""
    tune_allocator()  # does nothing under DISTILSET_ALLOCATOR=system
    data = ds.load_dataset("fashion-mnist")
    syn = ds.baseline("random", data, ipc=10, seed=0)
    x, y = syn.images, syn.labels
    arms = ("float32", "bfloat16", CHANNELS_LAST)
    nets = {p: create_net("convnet", (1, 28, 28), 10, seed=0) for p in arms}
    opts = {p: torch.optim.SGD(n.parameters(), 0.01, momentum=0.9, weight_decay=5e-4) for p, n in nets.items()}
    times: dict[str, list[float]] = {p: [] for p in nets}
    for step in range(steps + 3):
        for precision in list(nets) if step % 2 == 0 else list(nets)[::-1]:
            xb = dsa(x, DSA, seed=step, siamese=False)
            if precision == CHANNELS_LAST:  # the layout the baseline's DSA crop left: the whole net channels-last
                xb = xb.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            t0 = time.perf_counter()
            with autocast(precision.split(",")[0]):
                out = nets[precision](xb)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opts[precision].zero_grad(set_to_none=True)
            loss.backward()
            opts[precision].step()
            if step >= 3:
                times[precision].append(time.perf_counter() - t0)
    net, test_x, test_y = nets["float32"], data.test_x, data.test_y
    passes = {
        "autograd forward (the baseline's), float32": lambda: _main_accuracy(net, test_x, test_y),
        "inference mode, float32": lambda: accuracy(net, test_x, test_y),
        "inference mode, bfloat16": lambda: accuracy(net, test_x, test_y, precision="bfloat16"),
    }
    test = {}
    for name, fn in passes.items():
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        test[name] = statistics.median(ts)
    return {"train_step_ms": {p: 1000 * statistics.median(ts) for p, ts in times.items()}, "test_pass_s": test}


def levers(threads: int, steps: int = 20) -> dict:
    """The levers row: processes with glibc's allocator as it is and tuned, alternating (system, tuned, tuned,
    system); each arm's figures are the mean of its two processes."""
    arms: dict[str, list[dict]] = {"system": [], "tuned": []}
    for arm in ("system", "tuned", "tuned", "system"):
        env = {**os.environ, "DISTILSET_ALLOCATOR": arm}
        code = f"import eval_speed, json, torch; torch.set_num_threads({threads}); "
        code += f"print(json.dumps(eval_speed._levers_here({steps})))"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
        arms[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"levers {arm}: {arms[arm][-1]}", flush=True)
    out: dict = {"train_step_ms": {}, "test_pass_s": {}}
    for arm, runs in arms.items():
        for part in out:
            for name in runs[0][part]:
                value = statistics.fmean(r[part][name] for r in runs)
                out[part][f"{name}, {arm} allocator"] = round(value, 1 if part == "train_step_ms" else 2)
    return {"row": "levers", **out, "steps": steps}


def eval_parity(repeats: int = 5) -> dict:
    cases = {
        "mnist5k, DC protocol (SGD, 300 epochs)": ("mnist5k", {"protocol": "standard", "epochs": 300}),
        "fashion-mnist, Adam lr 1e-3, 300 epochs": (
            "fashion-mnist",
            {"protocol": "standard", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "epochs": 300},
        ),
    }
    out = {}
    for name, (dataset, options) in cases.items():
        data = ds.load_dataset(dataset)
        syn = ds.baseline("random", data, ipc=10, seed=0)
        arms = {}
        for precision in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            r = ds.evaluate(syn, data, repeats=repeats, seed=0, precision=precision, **options)
            arms[precision] = {
                "runs": r.runs,
                "acc_mean": r.accuracy_mean,
                "acc_std": r.accuracy_std,
                "s": round(time.perf_counter() - t0, 1),
            }
            print(f"eval-parity {name} {precision}: {r}", flush=True)
        diff = arms["bfloat16"]["acc_mean"] - arms["float32"]["acc_mean"]
        spread = max(arms["float32"]["acc_std"], arms["bfloat16"]["acc_std"])
        out[name] = {**arms, "difference": diff, "larger_std": spread, "parity": abs(diff) <= spread}
    return {"row": "eval-parity", "repeats": repeats, "cases": out, "parity": all(c["parity"] for c in out.values())}


def dm_parity() -> dict:
    cases = {  # name: dataset, options, nets per evaluation
        "digits, default flags, 5 nets": ("digits", {}, 5),
        "mnist5k, default flags but 100 iterations, 3 nets": ("mnist5k", {"iterations": 100}, 3),
    }
    out = {}
    for name, (dataset, options, repeats) in cases.items():
        data = ds.load_dataset(dataset)
        arms = {}
        for precision in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            syn = ds.distill("dm", data, seed=0, precision=precision, **options)
            distill_s = round(time.perf_counter() - t0, 1)
            r = ds.evaluate(syn, data, repeats=repeats, seed=100)
            arms[precision] = {
                "distill_s": distill_s,
                "runs": r.runs,
                "acc_mean": r.accuracy_mean,
                "acc_std": r.accuracy_std,
            }
            print(f"dm-parity {name} {precision}: {distill_s} s, {r}", flush=True)
        diff = arms["bfloat16"]["acc_mean"] - arms["float32"]["acc_mean"]
        spread = max(arms["float32"]["acc_std"], arms["bfloat16"]["acc_std"])
        out[name] = {**arms, "difference": diff, "larger_std": spread, "parity": abs(diff) <= spread}
    return {"row": "dm-parity", "cases": out, "parity": all(c["parity"] for c in out.values())}


def table() -> str:
    """The docs' tables of the evaluation path (``docs/speed.md``), from ``benchmarks/results/eval-speed.json``."""
    data = json.loads(OUT.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    m = data["machine"]
    lines = []
    if "eval-dsa" in rows:
        r = rows["eval-dsa"]
        b, t = r["summary"]["baseline"], r["summary"]["this"]
        lines += [
            "| eval-dsa: 100 Fashion-MNIST images, DC's protocol + DSA, 1000 epochs, ConvNet-3 w128, 3 nets | "
            "s per net (train + test) | accuracy % | precision |",
            "|---|---|---|---|",
            f"| baseline, commit {r['baseline_commit'][:7]} | {b['s_mean']:.1f} | "
            f"{100 * b['acc_mean']:.2f} ± {100 * b['acc_std']:.2f} | float32 |",
            f"| this tree, commit {r['this_commit'][:7]} | {t['s_mean']:.1f} | "
            f"{100 * t['acc_mean']:.2f} ± {100 * t['acc_std']:.2f} | "
            f"{r['runs']['this'][0]['settings'].get('precision', 'float32')} |",
            "",
            f"Speed-up **{r['speedup']:.2f}x** (time ratio {r['time_ratio']:.3f}), paired: each net a fresh process, "
            f"the two trees alternating; accuracies {'within' if r['parity'] else 'NOT within'} the larger std. "
            f"Command: `{r['command']}`.",
            "",
        ]
    if "levers" in rows:
        r = rows["levers"]
        lines += ["| lever (one training step of eval-dsa, 100 images) | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in r["train_step_ms"].items()]
        lines += ["", "| the test pass (10,000 images, batch 1024) | s |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in r["test_pass_s"].items()]
        lines += [
            "",
            f"Median of {r['steps']} steps per arm; each allocator arm is two fresh processes (the mean "
            f"of both), the precisions alternating step by step within each. Command: `{r['command']}`.",
            "",
        ]

    def acc(arm: dict) -> str:
        timed = f"{arm['distill_s']:.0f}, " if "distill_s" in arm else ""
        return f"{timed}{100 * arm['acc_mean']:.2f} ± {100 * arm['acc_std']:.2f}"

    for key, head in (
        ("eval-parity", "parity: 100 random real images, ConvNet-3, 5 nets | float32 % | bfloat16 %"),
        (
            "dm-parity",
            "DM, real batches embedded in float32 / bfloat16 (`precision`), the set evaluated by its recipe "
            "| float32: distil s, accuracy % | bfloat16: distil s, accuracy %",
        ),
    ):
        if key not in rows:
            continue
        r = rows[key]
        lines += [f"| {head} | difference (points) | within the larger std |", "|---|---|---|---|---|"]
        for name, c in r["cases"].items():
            lines.append(
                f"| {name} | {acc(c['float32'])} | {acc(c['bfloat16'])} | {100 * c['difference']:+.2f} | "
                f"{'yes' if c['parity'] else 'no'} |"
            )
        lines += ["", f"Command: `{r['command']}`.", ""]
    lines.append(
        f"{m['cores']} CPU cores, torch {m['torch']}, {data['rows'][0].get('threads', 2)} threads, {m['date']}."
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=["levers", "eval-parity", "eval-dsa"], choices=ROWS)
    p.add_argument("--baseline-tree", type=Path, help="a checkout of the baseline commit (eval-dsa)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table", action="store_true", help="print the docs' tables and exit")
    args = p.parse_args()
    if args.table:
        print(table())
        return
    if "eval-dsa" in args.rows and args.baseline_tree is None:
        p.error("eval-dsa needs --baseline-tree (a git worktree of the baseline commit)")
    torch.set_num_threads(args.threads)
    results = ResultFile(OUT, SETTINGS)
    for name in args.rows:
        t0 = time.perf_counter()
        if name == "eval-dsa":
            row = eval_dsa(args.baseline_tree.resolve(), args.threads)
        else:
            row = {"levers": lambda: levers(args.threads), "eval-parity": eval_parity, "dm-parity": dm_parity}[name]()
        results.drop({"row": name})
        wall = round(time.perf_counter() - t0, 1)
        results.add({**row, "threads": args.threads, "wall_s": wall, "command": command_line()})
        print(json.dumps(row)[:2000], flush=True)


if __name__ == "__main__":
    main()
