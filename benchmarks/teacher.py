"""Teacher-era distillation beside random real images, like for like: SRe2L, RDED, random real images, DM and MTT,
each under (a) the teacher recipe and (b) DC's hard-label protocol, on ConvNet-3 BN, ResNet-18 and the MLP; and the
per-image costs that scale SRe2L and RDED to ImageNet-1k.

    .venv/bin/python benchmarks/teacher.py --datasets fashion-mnist --ipc 10    # rows (resumable; ~2 h per pair)
    .venv/bin/python benchmarks/teacher.py --cost                               # per-image costs (~3 min)
    .venv/bin/python benchmarks/teacher.py --table                              # the docs tables

Per dataset: the teacher is ``distilset teacher --dataset NAME`` with default flags (ConvNet-3 with batch norm,
width 128). The five sets of ``--ipc`` images per class:
- ``sre2l``, ``rded``: ``distilset distill sre2l|rded --dataset NAME --ipc N --teacher DIR``, default flags;
- ``random``: random real images (``distilset baseline random``, seed 0);
- ``dm``: DM at the matching benchmark's CPU budget (ConvNet-3 width 32, 300 iterations);
- ``mtt``: MTT at the MTT benchmark's CPU profile (3 experts x 6 epochs of ConvNet-3 width 32, batch 256; 100
  iterations with the grey-scale preset of the IPC, width 32).
Each set is trained by fresh nets (``--repeats``, seeds 0, 1, ...), final test accuracy:
- ``teacher``: the teacher recipe (``recipes.Teacher``: KL to the teacher's soft labels at T 20 on crops, flips where
  the dataset allows them and CutMix, AdamW 1e-3, 300 epochs, RDED's batch rule) with the dataset's teacher: the
  same recipe and teacher for every set, random real images included (SRe2L's and RDED's sets carry exactly this
  recipe at factor 1);
- ``dc``: DC's protocol with hard labels and no augmentation for every set (SGD 0.01, momentum 0.9, weight decay
  5e-4, 300 epochs, lr x0.1 at half; DM's and MTT's own recipes add DSA or a learned lr: here all sets share one).
Nets: ``convnet-bn`` (ConvNet-3 with batch norm, width 128: the teacher's architecture, SRe2L's and RDED's student),
``resnet18`` (basic blocks, batch norm, width 32 to fit the CPU: the papers' student at a quarter of its width) and
``mlp`` (2 hidden layers of 128). Rows go to ``benchmarks/results/teacher.json`` as they finish, each with the
command it stands for; sets and teachers are kept under ``$DISTILSET_BENCH_WORK`` (default /tmp/distilset-teacher).

``--older`` trains every other method's set, made with default flags on ``--datasets`` (the defaults matrix's
command, ``distilset distill METHOD --dataset NAME``), by its own recipe and by the teacher recipe with the dataset's
teacher, each on the set's own net, beside random real images of the same count under the same teacher recipe and
net: each method with and without a teacher (rows in ``benchmarks/results/teacher-older.json``).

``--cost`` measures what one image costs: a recovery iteration of SRe2L and a scored crop of RDED, on the default
teacher at 28x28 and on ResNet-18 (batch norm, width 64) at 56x56, the compute of ImageNet's ResNet-18 at 224x224
once its stem (stride 2, then max pooling) has reduced the input to 56x56 (the 7x7 stem conv is ~6 % of its
multiply-adds, left out). From those rates it derives ImageNet-1k IPC 10 and 50: SRe2L recovers 1000 x IPC images for
4000 iterations (its ImageNet script), RDED scores 300 candidates x 5 crops per class (its scripts, any IPC); W
workers divide the work (classes for SRe2L under torchrun, crop shards for RDED on Ray), their all-reduce and
scheduling left out. Published GPU figures are context, with their source.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _common import RESULTS, ResultFile, cli_flags, command_line, machine

import distilset as ds
from distilset.methods.experts import ExpertConfig, train_experts
from distilset.nets import create_net
from distilset.recipes import teacher_recipe
from distilset.teachers import TEACHER_FILE, load_teacher, train_teacher

OUT = RESULTS / "teacher.json"
WORK = Path(os.environ.get("DISTILSET_BENCH_WORK", "/tmp/distilset-teacher"))
SETS = ("sre2l", "rded", "random", "dm", "mtt")
VARIANTS = {"sre2l-noise": ("sre2l", {"init": "noise"})}
"""Ablations (``--sets sre2l-noise``): SRe2L from Gaussian noise, the paper's start (the default: real images)."""
NETS = {"convnet-bn": {}, "resnet18": {"norm": "batch", "width": 32}, "mlp": {}}
RECIPES = ("teacher", "dc")
DM = {"iterations": 300, "net_kwargs": {"width": 32}}
MTT_EXPERTS = {"experts": 3, "epochs": 6, "width": 32, "batch_size": 256}
MTT_ITERATIONS = 100
PUBLISHED = [
    "RDED (Sun et al. 2024, README): ImageNet-1k IPC 10 synthesised in about 7 minutes on one RTX 4090 (ResNet-18 "
    "observer, 300 candidates x 5 crops per class).",
    "SRe2L (Yin et al. 2023): 4000 recovery iterations per batch of 100 ImageNet classes; RDED's paper puts SRe2L's "
    "ImageNet-1k IPC 10 at about 6 hours (its comparison, GPU count as in SRe2L's setup).",
]


def teacher_dir(data: ds.Dataset) -> tuple[Path, dict]:
    """The dataset's default teacher (trained once, kept), and its row facts."""
    out = WORK / f"teacher-{data.info.name}"
    t0 = time.perf_counter()
    if not (out / TEACHER_FILE).exists():
        resume = (out / "checkpoint").exists()
        train_teacher(data, out, resume=resume, overwrite=not resume and out.exists(), progress=True, log=print)
    teacher = load_teacher(out)
    info = json.loads((out / "teacher.json").read_text())
    facts = {
        "teacher_train_s": info["seconds"],
        "teacher_train_machine": info["machine"],
        "teacher": teacher.describe(),
        "teacher_test_acc": teacher.test_accuracy,
        "teacher_command": f"distilset teacher --dataset {data.info.name} --out {out}",
        "teacher_s": round(time.perf_counter() - t0, 1),
    }
    return out, facts


def make_set(name: str, data: ds.Dataset, ipc: int, teacher: Path) -> tuple[ds.SyntheticSet, dict]:
    """One of the five sets (kept under WORK, made once), with the command it stands for and its wall time."""
    out = WORK / f"{data.info.name}-ipc{ipc}-{name}"
    dataset = data.info.name
    method, more = VARIANTS.get(name, (name, {}))
    if name == "random":
        command = f"distilset baseline random --dataset {dataset} --ipc {ipc} --out {out}"
        options, iterations = None, None
    elif method in ("sre2l", "rded"):
        options, iterations = {"ipc": ipc, "teacher": str(teacher), **more}, None
    elif name == "dm":
        options, iterations = {"ipc": ipc, "net_kwargs": DM["net_kwargs"]}, DM["iterations"]
    else:
        presets = ds.get_method("mtt").presets
        preset = presets.get(f"mtt-{'fashion' if dataset == 'fashion-mnist' else dataset}-ipc{ipc}")
        e = MTT_EXPERTS
        experts = WORK / f"experts-{dataset}-w{e['width']}-e{e['epochs']}"
        start = preset.options if preset else {"ipc": ipc}
        options = {**start, "experts_dir": str(experts), "net_kwargs": {"width": e["width"]}}
        # the CPU profile's experts are shorter than the preset's start range: start anywhere they allow
        options["max_start_epoch"] = min(
            options.get("max_start_epoch", e["epochs"]), e["epochs"] - options.get("expert_epochs", 2)
        )
        iterations = MTT_ITERATIONS
    if options is not None:
        budget = f" --iterations {iterations}" if iterations else ""
        command = f"distilset distill {method} --dataset {dataset}{budget}{cli_flags(options)} --out {out}"
    if (out / "synset.json").exists():
        return ds.SyntheticSet.load(out), {"set_command": command, "made": "earlier run"}
    t0 = time.perf_counter()
    extra = {}
    if name == "random":
        syn = ds.baseline("random", data, ipc=ipc, seed=0)
        syn.save(out)
    else:
        manifest = Path(options["experts_dir"]) / "manifest.json" if name == "mtt" else None
        if manifest and (not manifest.exists() or len(json.loads(manifest.read_text())["experts"]) < e["experts"]):
            cfg = ExpertConfig(
                net="convnet", net_kwargs={"width": e["width"]}, epochs=e["epochs"], batch_size=e["batch_size"]
            )
            t1 = time.perf_counter()
            train_experts(data, options["experts_dir"], e["experts"], cfg)
            extra["experts_s"] = round(time.perf_counter() - t1, 1)
            extra["experts_command"] = (
                f"distilset experts --dataset {dataset} --experts {e['experts']} --net "
                f"convnet --net-arg width={e['width']} --epochs {e['epochs']} --batch-size "
                f"{e['batch_size']} --out {options['experts_dir']}"
            )
        syn = ds.distill(method, data, iterations=iterations, out=out, overwrite=True, progress=True, **options)
    return syn, {"set_command": command, "distill_s": round(time.perf_counter() - t0, 1), **extra}


def score(syn: ds.SyntheticSet, data: ds.Dataset, recipe: str, net: str, teacher: Path, repeats: int) -> dict:
    kwargs = NETS[net]
    if recipe == "teacher":
        r = ds.evaluate(syn, data, net=net, net_kwargs=kwargs, protocol="teacher", teacher=teacher, repeats=repeats)
    else:
        r = ds.evaluate(syn, data, net=net, net_kwargs=kwargs, protocol="standard", dsa=None, repeats=repeats)
    return {
        "mean": r.accuracy_mean,
        "std": r.accuracy_std,
        "runs": r.runs,
        "eval_s": round(r.wall_time_s, 1),
        "recipe_settings": r.recipe,
        "net_kwargs": r.net_kwargs,
    }


def named_recipes(rows: list[dict]) -> list[dict]:
    """Rows written before the recipe's settings had their own key held them under ``recipe``: name them."""
    for r in rows:
        if isinstance(r.get("recipe"), dict):
            r["recipe_settings"] = r["recipe"]
            r["recipe"] = "teacher" if r["recipe"]["kind"] == "teacher" else "dc"
    return rows


OLDER = ("dd", "labels", "dm", "dc", "dsa", "mtt", "frepo", "kip", "ls")


def older(args: argparse.Namespace) -> None:
    """Each older method's default-flag set by its own recipe and by the teacher recipe, beside random real."""
    torch.set_num_threads(args.threads)
    results = ResultFile(RESULTS / "teacher-older.json", {"repeats": args.repeats})
    results.data["rows"] = [r for r in results.data["rows"] if "taught" in r]  # earlier rows lost it to `facts`
    for dataset in args.datasets:
        data = ds.load_dataset(dataset)
        teacher, facts = teacher_dir(data)
        for method in OLDER:
            if results.has({"dataset": dataset, "method": method}):
                continue
            out = WORK / f"{dataset}-default-{method}"
            t0 = time.perf_counter()
            if (out / "synset.json").exists():
                syn, made = ds.SyntheticSet.load(out), "earlier run"
            else:
                syn = ds.distill(method, data, out=out, overwrite=out.exists(), progress=True)
                made = round(time.perf_counter() - t0, 1)
            own = ds.evaluate(syn, data, repeats=args.repeats)
            net = "mlp" if own.net.startswith("kernel:") else own.net  # a kernel set's finite net: the MLP
            kwargs = {} if own.net.startswith("kernel:") else own.net_kwargs
            taught = ds.evaluate(syn, data, net=net, net_kwargs=kwargs, teacher=teacher, repeats=args.repeats)
            real = ds.baseline("random", data, ipc=max(1, len(syn) // data.num_classes), seed=0)
            if len(real) != len(syn):
                raise SystemExit(f"{method}: {len(syn)} items is no whole number per class; no random real twin")
            base = ds.evaluate(real, data, net=net, net_kwargs=kwargs, teacher=teacher, repeats=args.repeats)
            row = {
                "dataset": dataset,
                "method": method,
                "size": len(syn),
                "distill_s": made,
                "set_command": f"distilset distill {method} --dataset {dataset} --out {out}",
                **{
                    name: {
                        "net": r.net,
                        "mean": r.accuracy_mean,
                        "std": r.accuracy_std,
                        "runs": r.runs,
                        "recipe": r.settings.get("recipe_text"),
                        "eval_s": round(r.wall_time_s, 1),
                    }
                    for name, r in (("own", own), ("taught", taught), ("random_teacher", base))
                },
                **facts,
                "threads": torch.get_num_threads(),
            }
            print(
                f"{dataset} {method}: own {100 * own.accuracy_mean:.1f}, teacher {100 * taught.accuracy_mean:.1f}, "
                f"random real with the teacher {100 * base.accuracy_mean:.1f} ({net})",
                flush=True,
            )
            results.add(row)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    results = ResultFile(
        OUT,
        {"repeats": args.repeats, "nets": NETS, "dm": DM, "mtt_experts": MTT_EXPERTS, "mtt_iterations": MTT_ITERATIONS},
    )
    named_recipes(results.data["rows"])
    for dataset in args.datasets:
        data = ds.load_dataset(dataset)
        teacher, facts = teacher_dir(data)
        print(f"{dataset}: {facts['teacher']}", flush=True)
        if not results.has({"dataset": dataset, "row": "teacher"}):
            results.add({"dataset": dataset, "row": "teacher", **facts, "command": facts["teacher_command"]})
        for ipc in args.ipc:
            for name in args.sets:
                todo = [
                    (rec, net)
                    for rec in args.recipes
                    for net in args.nets
                    if not results.has({"dataset": dataset, "ipc": ipc, "set": name, "recipe": rec, "net": net})
                ]
                if not todo:
                    continue
                syn, made = make_set(name, data, ipc, teacher)
                for rec, net in todo:
                    t0 = time.perf_counter()
                    row = score(syn, data, rec, net, teacher, args.repeats)
                    print(
                        f"{dataset} ipc {ipc} {name:6s} {rec:7s} {net:10s} {100 * row['mean']:.2f} ± "
                        f"{100 * row['std']:.2f} ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
                    results.add(
                        {
                            "dataset": dataset,
                            "ipc": ipc,
                            "set": name,
                            "recipe": rec,
                            "net": net,
                            **row,
                            **made,
                            **facts,
                            "threads": torch.get_num_threads(),
                            "command": command_line(),
                        }
                    )


# ---- per-image costs and the ImageNet-1k estimate ------------------------------------------------------------------
def _rate(fn, items: int, repeat: int = 3) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return items * repeat / (time.perf_counter() - t0)


def cost(args: argparse.Namespace) -> None:
    """Images per second of a recovery iteration (forward and backward to the input through a frozen batch-norm
    teacher, its statistics hooks on) and of crop scoring (forward), for two teachers."""
    from distilset.methods.base import Context
    from distilset.methods.sre2l import SRe2L, SRe2LConfig

    torch.set_num_threads(args.threads)
    results = ResultFile(RESULTS / "teacher-cost.json", {"batch": 100})
    data = ds.load_dataset("fashion-mnist")
    teacher, _ = teacher_dir(data)
    rows = []
    default = load_teacher(teacher)
    run_ = SRe2L(data, default, SRe2LConfig(ipc=10), Context(iterations=10))
    rows.append(
        (
            "default teacher (ConvNet-3 BN w128) at 1x28x28",
            _rate(lambda: run_.step(0), 100),
            _rate(lambda: default.logits(data.train_x[:512]), 512),
        )
    )
    net = create_net("resnet18", (3, 56, 56), 1000, seed=0, norm="batch").eval().requires_grad_(False)
    x = torch.randn(100, 3, 56, 56, requires_grad=True)

    def recover_step() -> None:
        stats = []
        hooks = [
            m.register_forward_pre_hook(
                lambda m, i: stats.append(i[0].mean((0, 2, 3)).norm() + i[0].var((0, 2, 3)).norm())
            )
            for m in net.modules()
            if isinstance(m, torch.nn.BatchNorm2d)
        ]
        loss = torch.nn.functional.cross_entropy(net(x), torch.arange(100)) + sum(stats)
        loss.backward()
        for h in hooks:
            h.remove()

    recover = _rate(recover_step, 100, 2)  # the backward to the input needs autograd on
    with torch.no_grad():
        crops = torch.randn(256, 3, 56, 56)
        scored = _rate(lambda: net(crops), 256, 2)
    rows.append(("ResNet-18 BN w64 at 3x56x56 (~ImageNet ResNet-18 at 224)", recover, scored))
    for what, recover, scored in rows:
        print(f"{what}: recovery {recover:.1f} image-iterations/s, scoring {scored:.0f} crops/s", flush=True)
        results.add(
            {
                "teacher": what,
                "recover_images_per_s": recover,
                "crops_per_s": scored,
                "threads": torch.get_num_threads(),
                "machine": machine(),
            }
        )
    results.add(stored_views(data, teacher))


def stored_views(data: ds.Dataset, teacher: Path) -> dict:
    """What relabelling (stored views, FKD) costs and stores for 10 random real images per class, and the training
    time it saves: one ConvNet-3 BN trained by the teacher recipe with the live teacher and with the stored views."""
    import tempfile

    syn = ds.baseline("random", data, ipc=10, seed=0)
    recipe = teacher_recipe(len(syn), data.num_classes, data.flips)
    t0 = time.perf_counter()
    taught = ds.relabel(syn, load_teacher(teacher), recipe, seed=0)
    relabel_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        taught.save(tmp, grid=False)
        size = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
    live = ds.evaluate(syn, data, net="convnet-bn", teacher=teacher, repeats=1)
    stored = ds.evaluate(taught, data, net="convnet-bn", repeats=1)
    print(
        f"stored views: {size}, relabel {relabel_s:.0f} s, training {live.wall_time_s:.0f} s live vs "
        f"{stored.wall_time_s:.0f} s stored",
        flush=True,
    )
    return {
        "what": "stored views",
        "dataset": data.info.name,
        "items": len(syn),
        "epochs": taught.views.epochs,
        "top_k": taught.views.top_k,
        "files_bytes": size,
        "relabel_s": round(relabel_s, 1),
        "train_live_s": round(live.wall_time_s, 1),
        "train_stored_s": round(stored.wall_time_s, 1),
        "acc_live": live.accuracy_mean,
        "acc_stored": stored.accuracy_mean,
        "threads": torch.get_num_threads(),
        "command": command_line(),
        "machine": machine(),
    }


def imagenet_table(cost_rows: list[dict]) -> list[str]:
    """ImageNet-1k IPC 10 and 50 from the measured ResNet-18 rates, on W workers like this machine."""
    row = next(r for r in cost_rows if r.get("teacher", "").startswith("ResNet-18"))
    lines = ["| method | IPC | work | 1 worker (2 cores) | 8 workers | 64 workers |", "|---|---|---|---|---|---|"]

    def span(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"

    for ipc in (10, 50):
        work = 1000 * ipc * 4000
        s = work / row["recover_images_per_s"]
        lines.append(
            f"| SRe2L recover | {ipc} | {work:.1e} image-iterations | {span(s)} | {span(s / 8)} | {span(s / 64)} |"
        )
    for ipc in (10, 50):
        work = 1000 * 300 * 5
        s = work / row["crops_per_s"]
        lines.append(f"| RDED score | {ipc} | {work:.1e} crops | {span(s)} | {span(s / 8)} | {span(s / 64)} |")
    return lines


def table(part: str = "all") -> None:
    """Print the tables: ``sets`` (each dataset's sets under both recipes), ``older`` (every older method with and
    without the teacher), ``cost`` (ImageNet-1k from the measured rates), or ``all``."""
    import json

    every = named_recipes(json.loads(OUT.read_text())["rows"])
    rows = [r for r in every if "set" in r] if part in ("all", "sets") else []
    for r in every if part in ("all", "sets") else []:
        if r.get("row") == "teacher":
            print(f"{r['dataset']}: {r['teacher']}, trained in {r['teacher_train_s']:.0f} s ({r['command']})")
    for dataset in sorted({r["dataset"] for r in rows}):
        for ipc in sorted({r["ipc"] for r in rows if r["dataset"] == dataset}):
            picked = [r for r in rows if r["dataset"] == dataset and r["ipc"] == ipc]
            acc = picked[0].get("teacher_test_acc")
            print(f"\n{dataset}, {ipc} images per class (teacher {100 * acc:.1f} % test):\n")
            cols = [(rec, net) for rec in RECIPES for net in NETS]
            print("| set | " + " | ".join(f"{rec} {net}" for rec, net in cols) + " | made in |")
            print("|---|" + "---|" * (len(cols) + 1))
            base = {(r["recipe"], r["net"]): r["mean"] for r in picked if r["set"] == "random"}
            for name in [*SETS, *VARIANTS]:
                if not any(r["set"] == name for r in picked):
                    continue
                cells = []
                for rec, net in cols:
                    r = next((r for r in picked if r["set"] == name and r["recipe"] == rec and r["net"] == net), None)
                    if r is None:
                        cells.append("-")
                        continue
                    gap = (
                        ""
                        if name == "random" or (rec, net) not in base
                        else f" ({100 * (r['mean'] - base[rec, net]):+.1f})"
                    )
                    cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}{gap}")
                made = next((r for r in picked if r["set"] == name and "distill_s" in r), {})
                took = made.get("distill_s", 0) + made.get("experts_s", 0)
                print(f"| {name} | " + " | ".join(cells) + f" | {took / 60:.1f} min |" if made else " | - |")
    older_file = RESULTS / "teacher-older.json"
    if older_file.exists() and part in ("all", "older"):
        print("\n| method | items | own recipe | teacher recipe | random real, teacher recipe | net |")
        print("|---|---|---|---|---|---|")
        for r in (r for r in json.loads(older_file.read_text())["rows"] if "taught" in r):
            own, taught, base = r["own"], r["taught"], r["random_teacher"]
            gap = 100 * (taught["mean"] - base["mean"])
            print(
                f"| {r['method']} | {r['size']} | {100 * own['mean']:.1f} ({own['net']}) | {100 * taught['mean']:.1f} "
                f"({gap:+.1f}) | {100 * base['mean']:.1f} | {taught['net']} |"
            )
    cost_file = RESULTS / "teacher-cost.json"
    if cost_file.exists() and part in ("all", "cost"):
        print()
        for line in imagenet_table(json.loads(cost_file.read_text())["rows"]):
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist"])
    p.add_argument("--ipc", nargs="+", type=int, default=[10])
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=[*SETS, *VARIANTS])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cost", action="store_true", help="measure the per-image costs instead")
    p.add_argument("--older", action="store_true", help="every other method with and without the teacher")
    p.add_argument("--table", action="store_true", help="print the tables from the JSON")
    args = p.parse_args()
    if args.table:
        table()
    elif args.cost:
        cost(args)
    elif args.older:
        older(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
