"""Seconds per outer iteration and peak memory of each method's main workload, beside the papers' released code.

    .venv/bin/python benchmarks/speed.py               # every missing row (about 40 minutes on 2 cores)
    .venv/bin/python benchmarks/speed.py --redo mtt-s40-checkpoint
    .venv/bin/python benchmarks/speed.py --table       # the README tables

Each row runs in a fresh process with ``--threads`` torch threads (default 2, the machine's cores): one warm-up
iteration, then ``--iterations`` timed ones (the fastest is reported, with the mean), one more for the heap
(whose polling thread would slow timed ones), one more under ``torch.profiler`` for the row's per-operator
table (self CPU time, top operators). ``peak_rss_mb`` is the process's peak resident set (VmHWM: data, model,
experts and all, as the reference figures below were taken); ``iteration_mb`` the peak C-heap bytes in use during
the heap iteration above the level before it (the tensors one iteration allocates; see ``_common.HeapPeak``).
``matmul`` measures what this CPU can do: float32 GFLOP/s of a 2048 x 2048 matmul with the same threads, so a
row's own rate can be read against it.

Rows:

- ``dd-T30``: DD, LeNet, mnist5k, fixed init, 10 distilled batches of 10 images x 3 epochs (T = 30), real batch
  1024, plain path; ``dd-T100-plain`` / ``dd-T100-checkpoint``: 10 epochs (T = 100), both gradient paths.
- ``mtt-s{10,20,40}-{plain,checkpoint}``: MTT, ConvNet-3 width 32, mnist5k, IPC 10 (every step trains on all 100
  images), DSA, syn_steps 10 / 20 / 40, both paths; ``mtt-w128-s20-*``: width 128. The experts (1 trajectory, 3
  epochs) are trained once before the rows, outside the clock; their content does not change the cost.
- ``labels``, ``dc``, ``dsa``, ``dm``, ``kip``, ``frepo``, ``ls``: the method with default flags on mnist5k.
- ``*-classic``: the same workload through the loop the papers' released code runs (DD: a module copy unrolled with
  ``autograd.grad(create_graph=True)`` and ``backward``; MTT: one flat parameter vector per student step, as the
  MTT code's reparametrised module does), written out in this file: the same data, net and draws as the row it
  copies.
- ``paired`` (classic rows, checkpointed rows, ``TRIED`` rows): the row and the one it is compared with, built side
  by side in one process, their iterations alternating A B, B A, ... (4 each), so that the machine's drift
  between runs does not enter their ratio.
- ``TRIED``: variants of a row, each one thing tried to make it faster (NHWC activations, ATen's convolutions
  instead of oneDNN's, one thread instead of two); ``dd-T30-real-batch-16`` is no remedy but a decomposition:
  DD with 16 real images per outer step instead of 1024, i.e. what the 30 unrolled steps cost alone.
- ``micro``: one layer of MTT's ConvNet at each of its sizes, forward + inner gradient (``create_graph``) + the
  outer gradient back to the input, in milliseconds: the convolution by oneDNN, in NHWC, and as unfold + matmul;
  the instance norm as ``group_norm`` and as composed mean/variance ops; ReLU + average pooling. It shows where
  an MTT student step spends its time. ``compile``: whether ``torch.compile`` takes the double backward.

``--reference [WORKLOAD ...]`` (``released-*`` rows): the papers' released code itself, run from its own venv
(torch 2.14.1 with torchvision) beside distilset's row of the same work, in fresh processes alternating; how it
is prepared, fed the same data and timed is ``benchmarks/released.py``'s docstring. The rows record the released
command, its commit and every known difference.

The older reference column holds the papers' released code as run on this machine kind (2 cores, 2 threads, the same
data and settings) when the speed work was planned: DD (Wang et al.'s code) and MTT (Cazenavette et al.'s code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import released
import torch
from _common import RESULTS, HeapPeak, ResultFile

OUT = RESULTS / "speed.json"
SETTINGS = {"benchmark": "speed", "version": 1}
EXPERTS = Path(os.environ.get("DISTILSET_BENCH_WORK", "/tmp/distilset-speed"))
MTT_BASE = {"ipc": 10, "expert_epochs": 1, "max_start_epoch": 1, "dsa": True}

REFERENCE_SOURCE = (
    "the papers' released code (DD: Wang et al.; MTT: Cazenavette et al.) run on this machine kind (2 cores, "
    "2 threads, same data and settings) when the speed work was planned, as reported in the project's speed "
    "issue; not rerun by this script"
)
# name -> (method, options, reference {s_per_iter, peak_rss_mb} of the released code, or None)
ROWS: dict[str, tuple[str, dict, dict | None]] = {
    "dd-T30": ("dd", {"net": "lenet", "net_init": "fixed", "steps": 10, "epochs": 3}, {"s": 0.35, "rss": 958}),
    "dd-T100-plain": ("dd", {"net": "lenet", "net_init": "fixed", "steps": 10, "epochs": 10}, None),
    "dd-T100-checkpoint": (
        "dd",
        {"net": "lenet", "net_init": "fixed", "steps": 10, "epochs": 10, "memory": "checkpoint"},
        None,
    ),  # fmt: skip
    **{
        f"mtt-s{s}-{path}": ("mtt", {**MTT_BASE, "syn_steps": s, "memory": path, "net_kwargs": {"width": 32}}, ref)
        for s, ref in ((10, {"s": 1.23, "rss": 2300}), (20, {"s": 2.13, "rss": 3800}), (40, {"s": 4.29, "rss": 6750}))
        for path in ("plain", "checkpoint")
    },
    **{
        f"mtt-w128-s20-{path}": (
            "mtt",
            {**MTT_BASE, "syn_steps": 20, "memory": path, "net_kwargs": {"width": 128}},
            None,
        )  # fmt: skip
        for path in ("plain", "checkpoint")
    },
    **{m: (m, {}, None) for m in ("labels", "dc", "dsa", "dm", "kip", "frepo", "ls")},
    "dc-fashion": ("dc", {"ipc": 10}, None),  # the released DC / DM code's workload (benchmarks/released.py)
    "dm-fashion": ("dm", {"ipc": 10}, None),
    "dm-fashion-bf16": ("dm", {"ipc": 10, "precision": "bfloat16"}, None),  # the real batches embedded in bfloat16
}
DATASET_OF = {"dc-fashion": "fashion-mnist", "dm-fashion": "fashion-mnist", "dm-fashion-bf16": "fashion-mnist"}
"""Rows on another dataset than mnist5k."""
# The released code's loop, written out here from the algorithm (not the library's engine): same data, same net.
CLASSIC = {"dd-T30-classic": "dd-T30", **{f"mtt-s{s}-classic": f"mtt-s{s}-plain" for s in (10, 20, 40)}}
# Things tried to make the unrolled workloads faster, each measured as a variant of a row above.
TRIED = {
    "mtt-s10-plain-channels-last": ("mtt-s10-plain", "channels_last"),  # the ConvNet's activations NHWC
    "dd-T30-no-mkldnn": ("dd-T30", "no_mkldnn"),  # torch.backends.mkldnn off: ATen's own convolutions
    "mtt-s10-plain-no-mkldnn": ("mtt-s10-plain", "no_mkldnn"),
    "mtt-s10-plain-1-thread": ("mtt-s10-plain", "one_thread"),
    "dd-T30-1-thread": ("dd-T30", "one_thread"),
    "dd-T30-real-batch-16": ("dd-T30", "real_batch_16"),  # not a remedy: what the 30 inner steps cost alone
    # bfloat16 autocast over the whole unrolled iteration (not adopted: no accuracy-parity row for distilled sets)
    "dd-T30-bf16": ("dd-T30", "bfloat16"),
    "mtt-s40-plain-bf16": ("mtt-s40-plain", "bfloat16"),
}
# Rows whose time is compared with another's: measured again with the two alternating in one process.
UNROLLS = ("dd-T100", "mtt-s10", "mtt-s20", "mtt-s40", "mtt-w128-s20")
PAIRS = {**CLASSIC, **{f"{u}-checkpoint": f"{u}-plain" for u in UNROLLS}}
PAIRS.update({name: of for name, (of, _) in TRIED.items()})
PAIRS["dm-fashion-bf16"] = "dm-fashion"
for _name, _of in {**CLASSIC, **{k: v[0] for k, v in TRIED.items()}}.items():
    ROWS[_name] = (*ROWS[_of][:2], None)  # the released code's figures describe the base row only


def experts_dir(width: int) -> Path:
    """One 3-epoch ConvNet-3 expert of this width on mnist5k, trained once (outside every row's clock)."""
    import distilset as ds
    from distilset.methods.experts import ExpertConfig, train_experts

    out = EXPERTS / f"experts-mnist5k-w{width}"
    if not (out / "manifest.json").exists():
        cfg = ExpertConfig(net="convnet", net_kwargs={"width": width}, epochs=3, batch_size=256)
        train_experts(ds.load_dataset("mnist5k"), out, 1, cfg)
    return out


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return round(2 * n**3 / best / 1e9, 1)


def _vm_hwm_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``, which keeps the parent's peak across
    fork + exec and so would report the experts' training for every row after it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _stepper(name: str, data) -> tuple:
    """The row's one-iteration callable: its distiller's ``step``, or the classic loop over that distiller."""
    from distilset.methods.base import Context
    from distilset.methods.registry import get_method, make_config

    method, options, _ = ROWS[name]
    m = get_method(method)
    if TRIED.get(name, (None, None))[1] == "real_batch_16":
        options = {**options, "real_batch": 16}
    if method == "mtt":
        options = {**options, "experts_dir": str(experts_dir(options["net_kwargs"]["width"]))}
    cfg, _ = make_config(m, options).resolve(data)
    ctx = Context(seed=0)
    objects = m.prepare(data, cfg, ctx) if m.prepare else {}  # MTT: the experts named by experts_dir, loaded
    distiller = m.build(data, cfg, ctx, **objects)
    if name in CLASSIC:
        return partial(classic_mtt_step if method == "mtt" else classic_dd_step, distiller), cfg
    return distiller.step, cfg


def _paired(name: str, partner: str, data, iterations: int) -> dict:
    """Seconds per iteration of this row and its partner, their iterations alternating in this one process,
    so that the machine's drift between runs does not enter the ratio."""
    (mine, _), (theirs, _) = _stepper(name, data), _stepper(partner, data)

    def timed(which: str, it: int) -> float:
        if which == "mine":
            with _variant(name):
                return _timed(lambda: mine(it))
        return _timed(lambda: theirs(it))

    timed("mine", 0), timed("theirs", 0)
    a, b = [], []
    for it in range(1, max(iterations, 4) + 1):  # A B, B A, A B, ...: neither always runs first
        for which in ("mine", "theirs") if it % 2 else ("theirs", "mine"):
            (a if which == "mine" else b).append(timed(which, it))
    return {"partner": partner, "s_per_iter": round(min(a), 4), "partner_s_per_iter": round(min(b), 4)}


@contextmanager
def _variant(name: str):
    """The global setting a ``TRIED`` row changes, in force only inside this block (so that a variant and its
    base row can alternate in one process)."""
    variant = TRIED.get(name, (None, None))[1]
    if variant == "no_mkldnn":
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    elif variant == "one_thread":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
    elif variant == "bfloat16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    elif variant == "channels_last":
        from distilset.nets.convnet import ConvNet

        embed = ConvNet.embed
        ConvNet.embed = lambda net, x: embed(net, x.contiguous(memory_format=torch.channels_last))
        try:
            yield
        finally:
            ConvNet.embed = embed
    else:
        yield


def one(name: str, iterations: int) -> dict:
    """Measure one row in this process (``--one``): its own iterations timed alone, one more for the heap, one
    under the profiler, then (rows in ``PAIRS``) the paired comparison."""
    import distilset as ds

    data = ds.load_dataset(DATASET_OF.get(name, "mnist5k"))
    step, cfg = _stepper(name, data)
    with _variant(name):
        step(0)
        threads = torch.get_num_threads()
        times = [_timed(lambda it=it: step(it)) for it in range(1, iterations + 1)]
        with HeapPeak() as heap:  # its polling thread would slow the timed iterations: a separate one
            step(iterations + 1)
        peak_rss = _vm_hwm_mb()  # before the profiler's own records
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(iterations + 2)
    paired = _paired(name, PAIRS[name], data, iterations) if name in PAIRS else None
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [[e.key, round(e.self_cpu_time_total / 1e3, 1), e.count, round(100 * e.self_cpu_time_total / total, 1)]
           for e in ops[:12]]  # fmt: skip
    return {
        "torch_threads": threads,
        "s_per_iter": round(min(times), 4),
        "s_per_iter_mean": round(sum(times) / len(times), 4),
        "iteration_mb": round(heap.mb, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "config": {k: v for k, v in vars(cfg).items() if isinstance(v, int | float | str | bool | None)},
        "profile": {"columns": ["op", "self_ms", "calls", "percent"], "top": top},
        **({"paired": paired} if paired else {}),
    }


def classic_dd_step(dd, iteration: int) -> None:
    from dd import _plain_iteration  # benchmarks/dd.py: the hand-written loop it times beside the engine

    _plain_iteration(dd)


def classic_mtt_step(mtt, iteration: int) -> None:
    """One MTT iteration as the released code runs it: the student's parameters as one flat vector per step,
    each step's gradient taken with ``create_graph``, the normalised distance to the expert's later epoch
    back-propagated with ``backward`` through the whole list; then the image and lr updates."""
    from torch.func import functional_call

    from distilset.losses import soft_cross_entropy
    from distilset.methods.experts import unflatten

    expert, start, order, seeds = mtt._plan()
    shapes = mtt.experts.param_shapes
    start_flat, target = mtt.experts.flat(expert, start), mtt.experts.flat(expert, start + mtt.cfg.expert_epochs)

    students = [start_flat.clone().requires_grad_(True)]
    for t in range(mtt.cfg.syn_steps):
        x, y = mtt.student_batch(order[t], seeds[t]), mtt.labels[order[t]]
        ce = soft_cross_entropy(functional_call(mtt.model, unflatten(students[-1], shapes), (x,)), y)
        grad = torch.autograd.grad(ce, students[-1], create_graph=True)[0]
        students.append(students[-1] - mtt.syn_lr * grad)
    loss = (students[-1] - target).pow(2).sum() / (start_flat - target).pow(2).sum()
    mtt.opt_img.zero_grad(set_to_none=True)
    mtt.syn_lr.grad = None
    loss.backward()
    mtt.opt_img.step()
    mtt._update_lr(mtt.syn_lr.grad)


def _layer_ms(fn, x: torch.Tensor, weights: list[torch.Tensor], reps: int = 7) -> float:
    """Median ms of fn's forward, the gradient of a loss on it w.r.t. ``weights`` (create_graph), and the
    gradient of that gradient's norm w.r.t. the input: the three passes an unrolled student step makes."""
    mix = torch.linspace(-1, 1, fn(x).numel()).view_as(fn(x))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        grads = torch.autograd.grad((fn(x) * mix).sum(), weights, create_graph=True)
        torch.autograd.grad(sum(g.pow(2).sum() for g in grads), [x])
        times.append(time.perf_counter() - t0)
    return round(1e3 * sorted(times)[reps // 2], 2)


def micro() -> dict:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    rows = []
    for c_in, side in ((1, 32), (32, 16), (32, 8)):  # MTT's ConvNet-3 width 32 on 28x28 (padded to 32) inputs
        x = torch.randn(100, c_in, side, side, generator=g, requires_grad=True)
        w = (0.1 * torch.randn(32, c_in, 3, 3, generator=g)).requires_grad_(True)
        b = torch.zeros(32, requires_grad=True)

        def unfold_conv(v, w=w, b=b, side=side):
            return (w.view(32, -1) @ F.unfold(v, 3, padding=1) + b[:, None]).view(100, 32, side, side)

        convs = {
            "conv oneDNN": lambda v, w=w, b=b: F.conv2d(v, w, b, padding=1),
            "conv NHWC": lambda v, w=w, b=b: F.conv2d(v.contiguous(memory_format=torch.channels_last), w, b, padding=1),
            "conv unfold+matmul": unfold_conv,
        }
        for name, fn in convs.items():
            rows.append({"layer": f"{c_in}->32 @ {side}x{side}", "op": name, "ms": _layer_ms(fn, x, [w, b])})
        h = torch.randn(100, 32, side, side, generator=g, requires_grad=True)
        gamma, beta = torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True)

        def composed(v, gamma=gamma, beta=beta):
            centred = v - v.mean((2, 3), keepdim=True)
            scale = torch.rsqrt(centred.square().mean((2, 3), keepdim=True) + 1e-5)
            return centred * scale * gamma[:, None, None] + beta[:, None, None]

        others = {
            "instance norm (group_norm)": (
                partial(F.group_norm, num_groups=32, weight=gamma, bias=beta),
                [gamma, beta],
            ),
            "instance norm (composed ops)": (composed, [gamma, beta]),
            "relu + avg pool": (lambda v, gamma=gamma: F.avg_pool2d(F.relu(v * gamma[:, None, None]), 2), [gamma]),
        }
        for name, (fn, ws) in others.items():
            rows.append({"layer": f"32 @ {side}x{side}", "op": name, "ms": _layer_ms(fn, h, ws)})
    return {"rows": rows}


def compile_check() -> dict:
    """Does torch.compile take an unrolled step's double backward?"""
    import torch.nn.functional as F

    step = torch.compile(lambda v, w: F.relu(F.conv2d(v, w, padding=1)).mean())
    x, w = torch.randn(4, 1, 8, 8, requires_grad=True), torch.randn(4, 1, 3, 3, requires_grad=True)
    try:
        (gw,) = torch.autograd.grad(step(x, w), [w], create_graph=True)
        torch.autograd.grad(gw.pow(2).sum(), [x])
        return {"double_backward": True}
    except RuntimeError as e:
        return {"double_backward": False, "error": str(e).splitlines()[0][:200]}


def run(names: list[str], redo: list[str], threads: int, iterations: int) -> None:
    results = ResultFile(OUT, SETTINGS)
    for name in redo:
        results.drop({"row": name})
    if not results.has({"row": "matmul", "threads": threads}):
        torch.set_num_threads(threads)
        results.add({"row": "matmul", "threads": threads, "gflops": matmul_gflops()})
    for extra, fn in (("micro", micro), ("compile", compile_check)):
        if not results.has({"row": extra, "threads": threads}):
            torch.set_num_threads(threads)
            results.add({"row": extra, "threads": threads, **fn()})
    for name in names:
        if results.has({"row": name, "threads": threads}):
            continue
        if name.startswith("mtt"):  # experts first, outside the row's process and clock
            experts_dir(ROWS[name][1]["net_kwargs"]["width"])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(threads), "--iterations", str(iterations)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent)
        if out.returncode:
            sys.exit(f"row {name} failed:\n{out.stderr[-3000:]}")
        row = {"row": name, "threads": threads, "iterations": iterations, **json.loads(out.stdout.splitlines()[-1])}
        ref = ROWS[name][2]
        if ref:
            row["reference"] = {"s_per_iter": ref["s"], "peak_rss_mb": ref["rss"], "source": REFERENCE_SOURCE}
        results.add(row)
        print(name, row["s_per_iter"], "s/iter", row["peak_rss_mb"], "MB", flush=True)


def reference(names: list[str], ref_dir: Path, threads: int, iterations: int) -> None:
    """The ``released-*`` rows: each workload of ``released.WORKLOADS`` by the released code and by distilset's
    row of the same work, in fresh processes alternating (see ``benchmarks/released.py``)."""
    python, data_root = ref_dir / "venv" / "bin" / "python", EXPERTS / "torchvision-data"
    if not python.exists():
        sys.exit(f"no released-code venv at {python}; prepare {ref_dir} as benchmarks/released.py says")
    for dataset, folder in (("mnist5k", "MNIST"), ("fashion-mnist", "FashionMNIST")):
        if not (data_root / folder / "raw" / "t10k-labels-idx1-ubyte").exists():
            released.export_dataset(dataset, data_root, folder)
    results = ResultFile(OUT, SETTINGS)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    floors = {  # the peak resident set of a process that only imports each side's libraries
        "ours_import_mb": released.import_mb(Path(sys.executable), "import torch, distilset"),
        "released_import_mb": released.import_mb(python, "import torch, torchvision"),
    }
    for name in names:
        w = released.WORKLOADS[name]
        code = ref_dir / w.repo
        work = EXPERTS / f"released-{w.repo}"
        fill = {"data": str(data_root), "work": str(work)}
        work.mkdir(parents=True, exist_ok=True)  # DatasetCondensation makes only the last folder of its save_path
        if w.setup and not (work / "setup-done").exists():
            script, args = w.setup.split(" ", 1)
            released.run_released(python, code, script, args.format(**fill))
            (work / "setup-done").write_text("")
        if w.ours.startswith("mtt"):
            experts_dir(ROWS[w.ours][1]["net_kwargs"]["width"])
        ours, theirs, their_train, ours_rss, their_rss = [], [], [], [], []
        for _ in range(w.rounds):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                w.ours,
                "--threads",
                str(threads),
                "--iterations",
                str(iterations),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent)
            if out.returncode:
                sys.exit(f"row {w.ours} failed:\n{out.stderr[-3000:]}")
            mine = json.loads(out.stdout.splitlines()[-1])
            ours.append(mine["s_per_iter_mean"])
            ours_rss.append(mine["peak_rss_mb"])
            timed = []
            for n in (w.n2,) if w.logged else (w.n1, w.n2):
                if w.scratch:
                    shutil.rmtree(work / w.scratch, ignore_errors=True)
                timed.append(released.run_released(python, code, w.script, w.args.format(n=n, **fill)))
            if w.logged:
                whole, train_only = released.logged_seconds(timed[0][2], skip=w.per_iteration)
                theirs.append(whole)
                their_train.append(train_only)
            else:
                theirs.append((timed[1][0] - timed[0][0]) / ((w.n2 - w.n1) * w.per_iteration))
            their_rss.append(max(rss for _, rss, _ in timed))
            print(f"released-{name}: ours {ours[-1]:.3f} s/it, released {theirs[-1]:.3f} s/it", flush=True)
        o, t = released.median(ours), released.median(theirs)
        row = {
            "row": f"released-{name}",
            "threads": threads,
            "ours_row": w.ours,
            "ours_s_per_iter": round(o, 4),
            "ours_peak_rss_mb": round(max(ours_rss), 1),
            "released_s_per_iter": round(t, 4),
            "released_peak_rss_mb": round(max(their_rss), 1),
            "time_ratio": round(o / t, 3),
            "memory_ratio": round(max(ours_rss) / max(their_rss), 3),
            "rounds": {"ours": ours, "released": theirs},
            "released_command": f"cd $R/{w.repo} && WANDB_MODE=disabled $R/venv/bin/python {w.script} "
            + w.args.format(n=w.n2 if w.logged else f"{w.n1}|{w.n2}", **fill),
            "released_timing": "median of the logged data + train time per iteration past the first epoch"
            if w.logged
            else "difference of whole runs of n1 and n2 iterations",
            "released_commit": subprocess.run(
                ["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "note": f"setup (R={ref_dir}): {released.SETUP}; differences: {w.differences or 'none known'}",
        }
        row.update(floors)
        if their_train:
            row["released_train_s_per_iter"] = round(released.median(their_train), 4)
            row["rounds"]["released_train"] = their_train
        results.drop({"row": row["row"], "threads": threads})
        results.add(row)


def table(threads: int = 2) -> None:
    data = json.loads(OUT.read_text())
    rows = {r["row"]: r for r in data["rows"] if r.get("threads") == threads}
    classic_of = {v: k for k, v in CLASSIC.items()}
    print("| workload | s/iteration | peak RSS (MB) | iteration heap (MB) | paired with the classic loop: ours / "
          "classic s/iteration (ratio) | released code, measured earlier: s/iteration, peak RSS (MB) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in ROWS:
        r = rows.get(name)
        if r is None or name in CLASSIC or name in TRIED:
            continue
        ref = r.get("reference")
        refs = f"{ref['s_per_iter']:g}, {ref['peak_rss_mb']:g}" if ref else "—"
        c = rows.get(classic_of.get(name, ""), {}).get("paired")  # classic and ours alternating in one process
        classic = (
            f"{c['partner_s_per_iter']:.3f} / {c['s_per_iter']:.3f} ({c['partner_s_per_iter'] / c['s_per_iter']:.2f})"
            if c
            else "—"
        )
        print(f"| {name} | {r['s_per_iter']:.3f} | {r['peak_rss_mb']:.0f} | {r['iteration_mb']:.0f} | {classic} | "
              f"{refs} |")  # fmt: skip
    print("\n| unroll | plain s/it | checkpoint s/it | checkpoint time cost | heap MB plain / checkpoint |")
    print("|---|---|---|---|---|")
    for plain_name in [n for n in ROWS if n.endswith("-plain") and n not in TRIED]:
        a, b = rows.get(plain_name), rows.get(plain_name[: -len("plain")] + "checkpoint")
        if a and b:
            pair = b.get("paired")  # alternating in one process where measured so; else the two rows' own runs
            t_plain, t_ckpt = (
                (pair["partner_s_per_iter"], pair["s_per_iter"]) if pair else (a["s_per_iter"], b["s_per_iter"])
            )
            how = "" if pair else " (separate runs)"
            print(
                f"| {plain_name[: -len('-plain')]} | {t_plain:.3f} | {t_ckpt:.3f} | "
                f"{100 * (t_ckpt / t_plain - 1):+.0f} %{how} | {a['iteration_mb']:.0f} / {b['iteration_mb']:.0f} |"
            )
    print("\n| tried | s/iteration | the row it varies | its s/iteration | ratio |")
    print("|---|---|---|---|---|")
    for name, (of, _) in TRIED.items():
        pair = rows.get(name, {}).get("paired")  # the variant and its base alternating in one process
        if pair:
            mine, base = pair["s_per_iter"], pair["partner_s_per_iter"]
            print(f"| {name} | {mine:.3f} | {of} | {base:.3f} | {mine / base:.2f} |")
    if "micro" in rows:
        print("\n| one layer of MTT's student step (100 images) | operation | ms |")
        print("|---|---|---|")
        for m in rows["micro"]["rows"]:
            print(f"| {m['layer']} | {m['op']} | {m['ms']:g} |")
    side = [r for name, r in rows.items() if name.startswith("released-")]
    if side:
        print("\n| workload: beside the released code (fresh processes alternating) | ours s/it | released s/it | "
              "ratio ours / released | released compute alone s/it (ratio) | ours peak RSS (MB) | released peak RSS "
              "(MB) | memory ratio | memory ratio above the import floor |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        floor = next((r for r in reversed(side) if "ours_import_mb" in r), None)
        for r in side:
            alone = r.get("released_train_s_per_iter")
            alone = f"{alone:.3f} ({r['ours_s_per_iter'] / alone:.2f})" if alone else "—"
            above = "—"
            if floor:
                mine, theirs = (r[f"{k}_peak_rss_mb"] - floor[f"{k}_import_mb"] for k in ("ours", "released"))
                above = f"{mine / theirs:.2f}"
            print(
                f"| {r['row'].removeprefix('released-')} (ours: {r['ours_row']}) | {r['ours_s_per_iter']:.3f} | "
                f"{r['released_s_per_iter']:.3f} | **{r['time_ratio']:.2f}** | {alone} | {r['ours_peak_rss_mb']:.0f} "
                f"| {r['released_peak_rss_mb']:.0f} | {r['memory_ratio']:.2f} | {above} |"
            )
        if floor:
            print(f"\nImport floor: a process that only imports the libraries peaks at {floor['ours_import_mb']:.0f} "
                  f"MB on our side (torch {data['machine']['torch']} + distilset) and "
                  f"{floor['released_import_mb']:.0f} MB on the released side (torch 2.14.1, a CUDA build, + "
                  "torchvision), measured with row "
                  f"`{floor['row']}`; the last column compares what each side adds above it. Released compute alone: "
                  "DD's own log of its forward, backward and step, without loading the real batch.")  # fmt: skip
        print("\n| our row beside the released code | tried, paired with it in one process (speed.json rows) |")
        print("|---|---|")
        for r in side:
            base = r["ours_row"]
            tried = [
                f"`{name}` {p['paired']['s_per_iter'] / p['paired']['partner_s_per_iter']:.2f}x time"
                + (f", {p['iteration_mb']:.0f} / {rows[base]['iteration_mb']:.0f} MB heap" if base in rows else "")
                for name, p in rows.items()
                if p.get("paired", {}).get("partner") == base
            ]
            print(f"| {base} | {'; '.join(tried) or '—'} |")
    comp = rows.get("compile")
    mm = rows.get("matmul", {}).get("gflops")
    m = data["machine"]
    print(f"\n{m['cores']} CPU cores ({m['cpu']}), {threads} torch threads, torch {m['torch']}, {m['date']}; "
          f"this CPU's float32 matmul (2048 x 2048): {mm} GFLOP/s."
          + (f" torch.compile on an unrolled step: {comp.get('error', 'works')}." if comp else "")
          + " Command: `.venv/bin/python benchmarks/speed.py`.")  # fmt: skip


def profile_table(name: str, threads: int = 2, top: int = 8) -> None:
    rows = {r["row"]: r for r in json.loads(OUT.read_text())["rows"] if r.get("threads") == threads}
    r = rows.get(name)
    if r is None:
        return
    print(f"\n`{name}`, one iteration under torch.profiler (self CPU time):\n")
    print("| operator | self ms | calls | % |")
    print("|---|---|---|---|")
    for op, ms, calls, pct in r["profile"]["top"][:top]:
        print(f"| `{op}` | {ms:g} | {calls} | {pct:g} |")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--redo", nargs="+", default=[], choices=list(ROWS), help="measure these rows again")
    parser.add_argument("--threads", type=_positive, default=2)
    parser.add_argument("--iterations", type=_positive, default=3)
    parser.add_argument("--table", action="store_true")
    parser.add_argument(
        "--profiles", nargs="*", choices=list(ROWS), help="with --table: per-operator tables of these rows"
    )
    parser.add_argument(
        "--reference",
        nargs="*",
        choices=list(released.WORKLOADS),
        metavar="WORKLOAD",
        help="time the released code beside ours (benchmarks/released.py: dd-T30 dd-T100 mtt-s10 mtt-s20 "
        "mtt-s40 dc dm; none named: all)",
    )
    parser.add_argument(
        "--reference-dir", type=Path, default=Path("/tmp/distilset-released"), help="the released code and its venv"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        torch.set_num_threads(args.threads)
        print(json.dumps(one(args.one, args.iterations)))
    elif args.reference is not None:
        reference(args.reference or list(released.WORKLOADS), args.reference_dir, args.threads, args.iterations)
    elif args.table:
        table(args.threads)
        for name in args.profiles or []:
            profile_table(name, args.threads)
    else:
        run(args.rows, args.redo, args.threads, args.iterations)


if __name__ == "__main__":
    main()
