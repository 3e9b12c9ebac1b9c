"""The ``distilset`` command: a thin layer over the API (datasets, experts, distill, baseline, evaluate).

User errors (unknown dataset, missing files, corrupt set, impossible ipc) print one line starting with
``distilset: error:`` and exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from distilset.baselines import BASELINES, baseline
from distilset.data import list_datasets, load_dataset
from distilset.errors import DistilsetError
from distilset.evaluate import PROTOCOLS, evaluate
from distilset.methods import METHODS, distill
from distilset.methods.experts import ExpertConfig, train_experts
from distilset.methods.mtt import MTTConfig
from distilset.methods.presets import PRESETS, get_preset
from distilset.synset import SyntheticSet


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--dataset",
        required=required,
        help="digits, mnist5k, fashion-mnist, mnist, ..., npz:PATH, folder:PATH",
    )
    p.add_argument("--data-root", default=None, help="directory of raw dataset files (default $DISTILSET_DATA_ROOT)")
    p.add_argument(
        "--data-path",
        default=None,
        help="explicit location of this dataset's files (e.g. Fashion-MNIST IDX dir)",
    )
    p.add_argument("--download", action="store_true", help="download missing files (checksum-verified)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)


def _load(args: argparse.Namespace, zca: bool = False):
    return load_dataset(args.dataset, root=args.data_root, download=args.download, path=args.data_path, zca=zca)


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistilsetError(f"--device {device} requested but no CUDA device is available; use --device cpu")


def _net_kwargs(pairs: list[str] | None) -> dict:
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise DistilsetError(f"--net-arg expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = list_datasets(args.data_root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<15}{'shape':<12}{'classes':>8}  {'present':<8} description")
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        print(f"{r['name']:<15}{shape:<12}{r['classes']:>8}  {'yes' if r['present'] else 'no':<8} {r['description']}")
    print("also: npz:PATH (x_train, y_train[, x_test, y_test]) and folder:PATH (one sub-folder per class)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    syn = baseline(args.method, data, ipc=args.ipc, seed=args.seed)
    out = syn.save(args.out)
    print(f"wrote {len(syn)} images ({args.method}, ipc {args.ipc}, {data.info.name}) to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_device(args.device)
    syn = SyntheticSet.load(args.dir)
    if args.dataset is None:
        if not syn.dataset:
            raise DistilsetError("the set does not record its dataset; pass --dataset NAME")
        args.dataset = syn.dataset
    data = _load(args)
    dsa = "auto" if args.dsa is None else (None if args.dsa == "none" else args.dsa)
    result = evaluate(
        syn,
        data,
        net=args.net,
        net_kwargs=_net_kwargs(args.net_arg) or None,
        protocol=args.protocol,
        repeats=args.repeats,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        dsa_strategy=dsa,
        seed=args.seed,
        device=args.device,
        progress=not args.json and sys.stderr.isatty(),
        optimizer=args.optimizer,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"{args.dir}: {result}")
        print("runs: " + " ".join(f"{100 * r:.2f}" for r in result.runs))
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    cfg = ExpertConfig(net=args.net, net_kwargs=_net_kwargs(args.net_arg), epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, dsa=not args.no_dsa, dtype=args.dtype)  # fmt: skip
    buf = train_experts(data, args.out, args.experts, cfg, seed=args.seed, device=args.device,
                        progress=sys.stderr.isatty())  # fmt: skip
    accs = [buf.manifest["experts"][str(i)]["test_accuracy"] for i in buf.ids]
    print(f"{len(buf)} experts x {buf.epochs} epochs of {args.net} on {data.info.name} in {args.out} "
          f"(final test accuracy {100 * sum(accs) / len(accs):.2f} % mean)")  # fmt: skip
    return 0


def _mtt_options(args: argparse.Namespace, options: dict) -> dict:
    """The distill options that apply to MTT, with its own flags on top."""
    fields = MTTConfig.__dataclass_fields__
    options = {k: v for k, v in options.items() if k in fields}
    own = {"syn_steps": args.syn_steps, "expert_epochs": args.expert_epochs, "max_start_epoch": args.max_start_epoch,
           "lr_img": args.lr_img, "lr_lr": args.lr_lr, "lr_teacher": args.lr_teacher, "batch_syn": args.batch_syn,
           "canvas": args.canvas}  # fmt: skip
    options.update({k: v for k, v in own.items() if v is not None})
    if args.texture:
        options["texture"] = True
    if args.no_dsa:
        options["dsa"] = False
    if not args.experts_dir:
        raise DistilsetError("mtt needs --experts-dir DIR (make it with `distilset experts --dataset NAME --out DIR`)")
    options["experts"] = args.experts_dir
    return options


def _parse_attack(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError as e:
        raise DistilsetError(f"--attack expects ATTACK_CLASS:TARGET_CLASS (e.g. 0:1), got {text!r}") from e
    return a, b


def cmd_distill(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset) if args.preset else None
    if preset is not None:
        if preset.method != args.method:
            raise DistilsetError(f"preset {args.preset} is for `distill {preset.method}`, not `distill {args.method}`")
        args.dataset = args.dataset or preset.dataset
        args.iterations = args.iterations or preset.iterations
    if args.dataset is None:
        raise DistilsetError("--dataset is required (or a --preset that names one)")
    options = dict(preset.options) if preset else {}
    explicit = {
        "ipc": args.ipc, "steps": args.steps, "epochs": args.epochs, "items": args.items, "init": args.init,
        "n_nets": args.n_nets, "net": args.net, "lr": args.lr, "init_lr": args.init_lr,
        "real_batch": args.real_batch, "label_init": args.label_init, "memory": args.memory,
        "segment": args.segment, "decay_epochs": args.decay_epochs, "attack": _parse_attack(args.attack),
        "pool_size": args.pool_size, "pretrain_epochs": args.pretrain_epochs,
    }  # fmt: skip
    options.update({k: v for k, v in explicit.items() if v is not None})
    if args.net_arg:
        options["net_kwargs"] = _net_kwargs(args.net_arg)
    if args.soft_labels:
        options["soft_labels"] = True
    if args.pretrain_classes:
        options["pretrain_classes"] = tuple(int(c) for c in args.pretrain_classes.split(","))
    if args.method == "labels":
        options = {k: v for k, v in options.items() if k in ("net", "real_batch", "label_init")}
        options.update({k: v for k, v in {"base": args.base, "variant": args.variant, "inner_lr": args.inner_lr,
                                          "label_lr": args.label_lr}.items() if v is not None})  # fmt: skip
        if args.base_dataset:
            options["source"] = load_dataset(args.base_dataset, root=args.data_root, download=args.download)
    if args.method == "mtt":
        options = _mtt_options(args, options)
    data = _load(args, zca=args.zca)
    syn = distill(
        args.method, data, iterations=args.iterations or 400, out=args.out, seed=args.seed, device=args.device,
        resume=args.resume, progress=sys.stderr.isatty(), checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, **options,
    )  # fmt: skip
    print(f"wrote {len(syn)} distilled images ({args.method}, {data.info.name}, init {syn.init_regime}) to {args.out}")
    if args.evaluate:
        res = evaluate(syn, data, repeats=args.evaluate, device=args.device)
        print(f"{res.protocol} evaluation: {res}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distilset", description="Dataset distillation: learn tiny training sets.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list dataset sources and whether their files are present here")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("baseline", help="build a baseline set (random, mean, kmeans, herding, full)")
    p.add_argument("method", choices=BASELINES)
    _add_data_args(p)
    p.add_argument("--ipc", type=int, default=10, help="images per class")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten the data (the set carries the matrix)")
    _add_run_args(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("distill", help="distill a dataset into a small synthetic set")
    p.add_argument("method", choices=METHODS)
    _add_data_args(p, required=False)
    p.add_argument("--out", required=True, help="output directory (set, grid.png, history.json, checkpoint/)")
    p.add_argument("--preset", default=None, help=f"named settings: {', '.join(PRESETS)}")
    p.add_argument("--iterations", type=int, default=None, help="outer iterations (default 400 or the preset's)")
    p.add_argument(
        "--ipc", type=int, default=None, help="images per class (dd: per step; the set holds steps x classes x ipc)"
    )
    p.add_argument("--steps", type=int, default=None, help="dd: distilled batches (default 10)")
    p.add_argument("--epochs", type=int, default=None, help="dd: passes over the distilled batches (default 3)")
    p.add_argument("--items", type=int, default=None, help="dd: items per step instead of classes x ipc (soft labels)")
    p.add_argument(
        "--init",
        default=None,
        help="dd: fixed | random | fixed-pretrained | random-pretrained; mtt: real | noise",
    )
    p.add_argument("--n-nets", type=int, default=None, help="dd: inits per outer iteration")
    p.add_argument("--net", default=None, help="network (dd default lenet)")
    p.add_argument("--net-arg", action="append", metavar="KEY=VALUE", help="network option, e.g. width=32")
    p.add_argument("--lr", type=float, default=None, help="outer (Adam) learning rate, default 0.01")
    p.add_argument("--init-lr", type=float, default=None, help="dd: initial inner lr, default 0.02")
    p.add_argument("--decay-epochs", type=float, default=None, help="dd: halve the outer lr every N real epochs (40)")
    p.add_argument("--real-batch", type=int, default=None, help="real images per outer iteration (1024)")
    p.add_argument("--soft-labels", action="store_true", help="dd: learn a label vector per item")
    p.add_argument("--label-init", default=None, help="dd soft labels: onehot | random")
    p.add_argument("--attack", default=None, metavar="A:B", help="dd: poisoning, make class A read as class B")
    p.add_argument("--pool-size", type=int, default=None, help="dd: pretrained nets in the pool")
    p.add_argument("--pretrain-classes", default=None, help="dd: pretrain the pool on these classes only, e.g. 0,1,2")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="dd: epochs of pool pretraining (5)")
    p.add_argument("--base", type=int, default=None, help="labels: number of base examples (100)")
    p.add_argument("--base-dataset", default=None, help="labels: take base images from this other dataset")
    p.add_argument("--variant", default=None, help="labels: second-order | ridge")
    p.add_argument("--inner-lr", type=float, default=None, help="labels: inner SGD lr (0.01)")
    p.add_argument("--label-lr", type=float, default=None, help="labels: Adam lr on the labels (1e-3)")
    p.add_argument("--experts-dir", default=None, help="mtt: directory made by `distilset experts`")
    p.add_argument("--syn-steps", type=int, default=None, help="mtt: student steps per iteration")
    p.add_argument("--expert-epochs", type=int, default=None, help="mtt: expert epochs to match (M)")
    p.add_argument("--max-start-epoch", type=int, default=None, help="mtt: start epochs are drawn below this")
    p.add_argument("--lr-img", type=float, default=None, help="mtt: SGD lr on the images")
    p.add_argument("--lr-lr", type=float, default=None, help="mtt: SGD lr on the learned student lr")
    p.add_argument("--lr-teacher", type=float, default=None, help="mtt: initial student lr (0.01)")
    p.add_argument("--batch-syn", type=int, default=None, help="mtt: synthetic images per student step (all)")
    p.add_argument("--texture", action="store_true", help="mtt: tileable textures (canvas, roll-and-crop)")
    p.add_argument("--canvas", type=int, default=None, help="mtt texture: canvas side in image sides (2)")
    p.add_argument("--no-dsa", action="store_true", help="mtt: no augmentation of the student's batches")
    p.add_argument("--zca", action="store_true", help="distil in ZCA-whitened space (the set carries the ZCA)")
    p.add_argument("--memory", default=None, help="plain | checkpoint (sub-linear memory in the unroll length)")
    p.add_argument("--segment", type=int, default=None, help="checkpoint segment length (dd: sqrt(T); mtt: 5)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="record a quick recipe accuracy every N iterations")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    p.add_argument("--evaluate", type=int, default=0, metavar="R", help="evaluate the result with R nets")
    _add_run_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("experts", help="train expert trajectories on real data (for mtt)")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="experts directory (resumes: finished experts are kept)")
    p.add_argument("--experts", type=int, default=5, help="number of experts (MTT: 100)")
    p.add_argument("--epochs", type=int, default=50, help="epochs per expert (MTT: 50)")
    p.add_argument("--net", default="convnet")
    p.add_argument("--net-arg", action="append", metavar="KEY=VALUE", help="network option, e.g. width=32")
    p.add_argument("--lr", type=float, default=0.01, help="SGD lr (MTT: 0.01)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-dsa", action="store_true", help="train without DSA augmentation")
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened data")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored parameter precision")
    _add_run_args(p)
    p.set_defaults(func=cmd_experts)

    p = sub.add_parser("evaluate", help="train fresh nets on a saved set and report test accuracy")
    p.add_argument("dir", help="directory holding synset.json and synset.safetensors")
    _add_data_args(p, required=False)
    p.add_argument("--net", default=None, help="network (default: the set's own, else convnet)")
    p.add_argument("--net-arg", action="append", metavar="KEY=VALUE", help="network option, e.g. width=32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="recipe for sets with learned lrs and step order, else standard",
    )
    p.add_argument("--epochs", type=int, default=None, help="standard protocol epochs (300; 1000 with DSA)")
    p.add_argument("--lr", type=float, default=None, help="standard protocol lr (default: the set's, else 0.01)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="standard protocol optimiser")
    p.add_argument("--dsa", default=None, help="DSA strategy, or 'none' (default: the set's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_run_args(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "device"):
            _check_device(args.device)
        return args.func(args)
    except DistilsetError as e:
        print(f"distilset: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distilset: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
