"""The ``distilset`` command: a thin layer over the API, generated from the registries and config classes.

``distilset distill METHOD`` is one subcommand per registered method; its options are the fields of the
method's config dataclass (type, choices, default and help from the field and its docstring), after the
options every method shares (dataset, output, iterations, preset, seed, device, resume), declared once.
``distilset evaluate``'s training options are the fields of ``recipes.Standard`` and ``distilset experts``'
those of ``ExpertConfig``, generated the same way. Nothing here names a particular method.

User errors (an unknown or foreign option, a bad value, a missing file, a corrupt set) print one line
starting with ``distilset: error:`` and exit with status 2; messages name options as flags. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from distilset.baselines import BASELINES, baseline, random_real_like
from distilset.config import FieldSpec, field_specs, flag_of, runtime_choices
from distilset.data import list_datasets, load_dataset
from distilset.data.registry import SOURCES
from distilset.distributed import current, init_from_env, world_size
from distilset.errors import DistilsetError, Interrupted
from distilset.evaluate import EVALUATIONS, PROTOCOLS, evaluate, evaluate_nets, record_evaluation, transfer_accuracy
from distilset.exchange import EXPORT_FORMATS, IMPORT_FORMATS, export_set, import_set
from distilset.methods import METHODS, distill
from distilset.methods.base import RunOptions, SharedOptions
from distilset.methods.experts import ExpertConfig, train_experts
from distilset.methods.registry import data_parallel_methods, preset_of
from distilset.recipes import Standard, Teacher, teacher_recipe
from distilset.relabel import VIEWS_FILE, relabel
from distilset.report import report
from distilset.rundir import prepare_out, releases_locks
from distilset.runtime import PRECISIONS, tune_allocator
from distilset.scores import FULL_STEPS, SCORES, record_scores, scores
from distilset.synset import SyntheticSet
from distilset.teach import SYSTEMS, teach
from distilset.teachers import TeacherConfig, load_teacher, train_teacher

DISTILL_DESCRIPTION = (
    "Distill a dataset into a small synthetic set with METHOD. Not sure which? On a laptop CPU start with dm: the "
    "most accuracy per minute of distillation in distilset's benchmark (README, matching benchmark); kip and ls "
    "when kernel regression is the use."
)


class UsageError(DistilsetError):
    """A command line argparse could not parse (unknown option, bad value, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, and never accepts abbreviated options."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---- options generated from config dataclasses ------------------------------------------------------------
def _value_type(spec: FieldSpec) -> Callable[[str], object]:
    base = spec.elem if spec.base is tuple else spec.base
    base = str if base is Path else base  # the config checks and converts it (an empty path is refused there)
    none_allowed = spec.optional and spec.auto is None and spec.base is not tuple and not spec.required_flag

    def convert(text: str):
        if none_allowed and text.lower() == "none":
            return None
        return base(text)

    convert.__name__ = base.__name__  # argparse names the type in "invalid int value" messages
    return convert


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _help(spec: FieldSpec, flags: Mapping[str, str], default_text: str | None) -> str:
    doc = DistilsetError(spec.doc).render(flags)  # option names in the doc shown as flags
    if default_text is not None:
        return f"{doc} (default: {default_text})".replace("%", "%%")
    if spec.auto is not None:
        default = f"auto: {spec.auto}"
    elif spec.base is dict or spec.default is None:
        default = "none"
    elif spec.base is tuple:
        default = " ".join(map(str, spec.default))
    elif isinstance(spec.default, float):
        default = f"{spec.default:g}"
    else:
        default = str(spec.default).lower() if spec.base is bool else str(spec.default)
    return f"{doc} (default: {default})".replace("%", "%%")


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    title: str | None,
    default_text: str | None = None,
    skip: tuple[str, ...] = (),
    helps: Mapping[str, str] | None = None,
) -> None:
    """One option per field of the config class ``cls``; only options given on the line reach the namespace.

    ``title``: the help's group (None: ``parser`` is that group); ``default_text`` replaces the field defaults in
    the help (e.g. evaluate: "the set's recipe"); ``skip``: fields another group of the same parser declares;
    ``helps``: a field's help in this command's words. A field marked ``REQUIRED_FLAG`` is required here; a field's
    earlier names (``OLD_NAMES``) are accepted, hidden, with a deprecation line (``config_options``)."""
    group = parser.add_argument_group(title) if title is not None else parser
    flags = flags_of(cls)
    for spec in field_specs(cls):
        if spec.name in skip:
            continue
        help_text = (helps or {}).get(spec.name) or _help(spec, flags, default_text)
        kw: dict = {"dest": spec.name, "default": argparse.SUPPRESS, "help": help_text}
        if spec.required_flag:
            kw["required"] = True
        if spec.base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif spec.base is dict:
            kw.update(action="append", type=_key_value, metavar="KEY=VALUE")
        elif spec.base is tuple:
            kw.update(nargs=spec.nargs, type=_value_type(spec), metavar=spec.elem.__name__.upper())
        else:
            kw["type"] = _value_type(spec)
            choices = runtime_choices(cls, spec.name)
            if choices:
                kw["choices"] = choices
                kw["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        group.add_argument(spec.flag, **kw)
        for old in _old_flags(spec):
            group.add_argument(flag_of(old), **{**kw, "dest": _OLD + old, "help": argparse.SUPPRESS})


_OLD = "old_name:"


def _old_flags(spec: FieldSpec) -> list[str]:
    """The earlier names of a field, and its own name where its flag is another (``--net-kwargs`` of ``--net-arg``,
    the teach systems' flag before 0.3)."""
    return [*spec.old_names, *([spec.name] if spec.flag != flag_of(spec.name) else [])]


def config_options(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The fields of ``cls`` given on the command line, as API values (KEY=VALUE lists become dicts); ``skip``:
    fields the command passes itself."""
    out = {}
    for spec in field_specs(cls):
        if spec.name in skip:
            continue
        for old in _old_flags(spec):
            if hasattr(args, _OLD + old):
                if hasattr(args, spec.name):
                    raise UsageError(f"{flag_of(old)} is the old name of {spec.flag}; give only {spec.flag}")
                if os.environ.get("RANK", "0") == "0":  # under torchrun: once
                    message = f"{flag_of(old)} is now {spec.flag}; the old name goes in the next release"
                    print(f"distilset: {message}", file=sys.stderr)
                setattr(args, spec.name, getattr(args, _OLD + old))
        if hasattr(args, spec.name):
            value = getattr(args, spec.name)
            out[spec.name] = dict(value) if spec.base is dict else value
    return out


def flags_of(cls: type) -> dict[str, str]:
    return {spec.name: spec.flag for spec in field_specs(cls)}


def _flags_of_parser(p: argparse.ArgumentParser) -> dict[str, str]:
    """Option name -> its flag, for every option of a (sub)command: how error messages name options."""
    return {
        a.dest: next(o for o in a.option_strings if o.startswith("--"))
        for a in p._actions
        if any(o.startswith("--") for o in a.option_strings)
    }


# ---- commands -------------------------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser, required: bool = True, unless: str = "") -> None:
    """``--dataset`` (required, or when ``unless`` says where it otherwise comes from, optional and saying so) and
    the options that locate its files."""
    p.add_argument(
        "--dataset",
        required=required,
        help="digits, mnist5k, fashion-mnist, mnist, ..., npz:PATH, folder:PATH"
        + (f" (required unless {unless})" if unless else ""),
    )
    p.add_argument("--data-root", default=None, help="directory of raw dataset files (default $DISTILSET_DATA_ROOT)")
    p.add_argument(
        "--data-path", default=None, help="explicit location of this dataset's files (e.g. Fashion-MNIST IDX dir)"
    )
    p.add_argument("--download", action="store_true", help="download missing files (checksum-verified)")


def _add_ray_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--ray",
        action="store_true",
        help=f"run on Ray: {what}; this machine's cluster or a new local one (needs distilset[ray])",
    )
    p.add_argument(
        "--ray-address", default=None, metavar="ADDRESS", help="with --ray: the cluster to join, auto or HOST:PORT"
    )


def _ray_of(args: argparse.Namespace) -> bool | str | None:
    if args.ray_address and not args.ray:
        raise UsageError("--ray-address needs --ray")
    return (args.ray_address or True) if args.ray else None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _load(args: argparse.Namespace, zca: bool = False):
    return load_dataset(args.dataset, root=args.data_root, download=args.download, path=args.data_path, zca=zca)


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise DistilsetError(f"--device {device} is not a device; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistilsetError(f"--device {device} requested but no CUDA device is available; use --device cpu")


def cmd_datasets(args: argparse.Namespace) -> int:
    rows = list_datasets(args.data_root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(15, *(len(r["name"]) + 2 for r in rows))
    print(f"{'name':<{width}}{'shape':<12}{'classes':>8}  {'present':<8} description")
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        present = "yes" if r["present"] else "no"
        print(f"{r['name']:<{width}}{shape:<12}{r['classes']:>8}  {present:<8} {r['description']}")
    print("also: npz:PATH (x_train, y_train[, x_test, y_test]) and folder:PATH (one sub-folder per class)")
    return 0


@releases_locks
def cmd_baseline(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    like = None
    if args.like is not None:
        if args.method != "random":
            raise UsageError("--like pairs a set with random real images: use `distilset baseline random --like DIR`")
        if args.ipc is not None:
            raise UsageError("--like takes the image count from the set; drop --ipc")
        like = SyntheticSet.load(args.like)
        if like.dataset and like.dataset != data.info.name:
            raise DistilsetError(f"the set in {args.like} was made from {like.dataset}; give --dataset {like.dataset}")
    out = prepare_out(args.out, overwrite=args.overwrite, offers=("overwrite",))
    if like is not None:
        syn = random_real_like(like, data, seed=args.seed)
        how = f"random real like {args.like}: its count, net and recipe ({syn.recipe.describe()})"
    else:
        args.ipc = 10 if args.ipc is None else args.ipc
        syn = baseline(args.method, data, ipc=args.ipc, seed=args.seed, progress=True)
        how = f"{args.method}, ipc {args.ipc}"
    syn.save(out)
    print(f"wrote {len(syn)} images ({how}, {data.info.name}) to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    syn = SyntheticSet.load(args.dir)
    if args.dataset is None:  # the set's dataset is a hint: only a registered name, never a path it names
        if syn.dataset not in SOURCES:
            named = f" (it names {syn.dataset!r})" if syn.dataset else ""
            raise DistilsetError(f"pass --dataset: the set does not name a registered dataset{named}")
        args.dataset = syn.dataset
    data = _load(args)
    if args.scores:
        return _evaluate_scores(args, syn, data)
    if args.nets is not None:
        return _evaluate_nets(args, syn, data)
    net_kwargs = dict(args.net_arg or []) or None
    result = evaluate(syn, data, net=args.net, net_kwargs=net_kwargs, **_training_options(args))
    if args.json:  # the result first: a save that fails below does not lose it
        print(json.dumps(result.to_json(), indent=2), flush=True)
    else:
        print(f"{args.dir}: {result}")
        print("runs: " + " ".join(f"{100 * r:.2f}" for r in result.runs), flush=True)
    _save_record(args, record_evaluation, result, EVALUATIONS)
    return 0


def _training_options(args: argparse.Namespace) -> dict:
    """How ``evaluate`` trains, from its command line: protocol, repeats, seed, device, Ray, teacher, recipe."""
    return {
        "protocol": args.protocol,
        "repeats": args.repeats,
        "seed": args.seed,
        "device": args.device,
        "progress": not args.json,
        "ray": _ray_of(args),
        "teacher": _teacher_of(args),
        "precision": args.precision,
        **_recipe_options(args),
    }


def _save_record(args: argparse.Namespace, record: Callable, result, name: str) -> None:
    """With ``--save``: ``record`` the (already printed) result in the set's directory, and say where."""
    if args.save:
        record(args.dir, result)
        if not args.json:
            print(f"recorded in {Path(args.dir) / name}")


def _evaluate_scores(args: argparse.Namespace, syn: SyntheticSet, data) -> int:
    """``evaluate --scores``: DD-Ranking's scores, each accuracy they come from, and the scores line."""
    others = [
        flag
        for flag, given in (
            ("--nets", args.nets),
            ("--net", args.net),
            ("--net-arg", args.net_arg),
            ("--protocol", args.protocol),
            ("--teacher", args.teacher),
            ("--ray", args.ray),
        )
        if given
    ]
    if others or _recipe_options(args):
        named = others[0] if others else "a training option"
        raise UsageError(f"--scores trains by the set's own recipe and net and by DC's protocol; drop {named}")
    result = scores(
        syn,
        data,
        repeats=args.repeats,
        seed=args.seed,
        weight=args.lrs_weight,
        gamma=args.ars_gamma,
        full_steps=args.full_steps,
        device=args.device,
        progress=not args.json,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(result.to_json()), flush=True)
    else:
        for name, acc in result.accuracies.items():
            cached = " (cached)" if acc.get("cached") else ""
            print(f"  {name:<9} {100 * acc['mean']:6.2f} ± {100 * acc['std']:.2f} %  {acc['recipe']}{cached}")
        print(f"{args.dir}: {result}", flush=True)
    _save_record(args, record_scores, result, SCORES)
    return 0


def _evaluate_nets(args: argparse.Namespace, syn: SyntheticSet, data) -> int:
    """``evaluate --nets a,b,c``: one row per network, and the mean over the networks the set was not made with."""
    if args.net is not None or args.net_arg:
        raise UsageError("--nets takes each network with its default options; drop --net / --net-arg")
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    results = evaluate_nets(syn, data, nets, **_training_options(args))
    own = (syn.net or {}).get("name", "convnet")
    transfer = transfer_accuracy(results, own)
    if args.save:
        for result in results:
            record_evaluation(args.dir, result)
    if args.json:
        print(json.dumps({"results": [r.to_json() for r in results], "own_net": own, "transfer_mean": transfer}))
        return 0
    print(f"{args.dir} ({len(syn)} images, made with {own}):")
    print(f"| {'net':<16} | {'protocol':<8} | {'test acc (%)':>13} | training |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 15}|----------|")
    for r in results:
        mark = " (own)" if r.net == own else ""
        acc = f"{100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f}"
        print(f"| {r.net + mark:<16} | {r.protocol:<8} | {acc:>13} | {r.settings.get('recipe_text', '')} |")
    if transfer is not None:
        print(f"transfer: {100 * transfer:.2f} % mean over the {sum(r.net != own for r in results)} other net(s)")
    return 0


def _teacher_of(args: argparse.Namespace):
    return load_teacher(args.teacher, args.device) if args.teacher is not None else None


def _recipe_options(args: argparse.Namespace) -> dict:
    """The training options given to ``evaluate``: fields of the standard recipe, or of the teacher recipe."""
    return {**config_options(args, Standard), **config_options(args, Teacher)}


def cmd_teacher(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    teacher = train_teacher(
        data,
        args.out,
        TeacherConfig(**config_options(args, TeacherConfig)),
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=True,
        log=print,
    )
    print(f"wrote {teacher.describe()} to {args.out}")
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    syn = SyntheticSet.load(args.dir)
    teacher = load_teacher(args.teacher, args.device) if args.teacher is not None else syn.teacher
    if teacher is None:
        raise DistilsetError("the set carries no teacher: give --teacher, a directory made by `distilset teacher`")
    recipe = None
    if not isinstance(syn.recipe, Teacher):  # the teacher recipe for its size, flips as the dataset allows
        if args.dataset is None and syn.dataset not in SOURCES:
            raise DistilsetError("pass --dataset: the set has no teacher recipe, and its flips depend on the dataset")
        args.dataset = args.dataset or syn.dataset
        recipe = teacher_recipe(len(syn), syn.num_classes, _load(args).flips)
    taught = relabel(syn, teacher, recipe, top_k=args.top_k, seed=args.seed, device=args.device, progress=True)
    taught.save(args.dir)
    size = sum(p.stat().st_size for p in Path(args.dir).glob("synset.*"))
    print(
        f"stored {taught.views.epochs} epochs x {len(syn)} views (top-{taught.views.top_k}) in {args.dir}/"
        f"{VIEWS_FILE}: {taught.views.nbytes / 2**20:.2f} MB beside {size / 2**20:.2f} MB of set"
    )
    return 0


@releases_locks
def cmd_import(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    syn = import_set(args.format, args.path, data, index=args.index, variant=args.variant, zca=args.zca)
    out = prepare_out(args.out, overwrite=args.overwrite, offers=("overwrite",))  # after every check: none failed
    syn.save(out)
    print(
        f"wrote {len(syn)} images ({args.format} from {args.path}, {data.info.name}; recipe "
        f"{syn.recipe.describe()}) to {out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    syn = SyntheticSet.load(args.dir)
    path = export_set(syn, args.format, args.out)
    print(f"wrote {len(syn)} items of {args.dir} as {args.format} to {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = report(args.dirs, args.out, title=args.title)
    print(f"wrote {path} ({len(args.dirs)} set{'s' if len(args.dirs) > 1 else ''}); open it in a browser")
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    data = _load(args, zca=args.zca)
    cfg = ExpertConfig(**config_options(args, ExpertConfig))
    buf = train_experts(
        data,
        args.out,
        args.experts,
        cfg,
        seed=args.seed,
        device=args.device,
        progress=True,
        ray=_ray_of(args),
        overwrite=args.overwrite,
    )
    accs = [buf.manifest["experts"][str(i)]["test_accuracy"] for i in buf.ids]
    print(
        f"{len(buf)} experts x {buf.epochs} epochs of {buf.manifest['config']['net']} on {data.info.name} in "
        f"{args.out} (final test accuracy {100 * sum(accs) / len(accs):.2f} % mean)"
    )
    return 0


def _run_options(args: argparse.Namespace, offers_ray: bool) -> dict:
    """What ``distill`` and ``teach`` take from the command line besides their declared options."""
    ray = _ray_of(args) if offers_ray else None
    return {"progress": True, "log": print, "data_root": args.data_root, "download": args.download, "ray": ray}


def cmd_distill(args: argparse.Namespace) -> int:
    method = METHODS[args.method]
    if args.evaluate < 0:
        raise DistilsetError(f"`evaluate` must be >= 0 (fresh nets to train after distilling), got {args.evaluate}")
    run = config_options(args, RunOptions, skip=_NOT_FLAGS)
    if run.get("preset"):
        args.dataset = args.dataset or preset_of(method.name, run["preset"]).dataset
    if args.dataset is None:
        raise DistilsetError("--dataset is required (or a --preset of this method that names one)")
    data = _load(args, zca=args.zca)
    syn = distill(method.name, data, **_run_options(args, method.ray), **run, **config_options(args, method.config))
    if not current().writer:  # data-parallel: rank 0 reports
        return 0
    print(f"wrote {len(syn)} distilled items ({method.name}, {data.info.name}) to {args.out}")
    if args.evaluate:
        res = evaluate(syn, data, repeats=args.evaluate, device=run.get("device", "cpu"))
        record_evaluation(args.out, res)
        print(f"evaluation: {res} (recorded in {Path(args.out) / EVALUATIONS})")
    return 0


def cmd_teach(args: argparse.Namespace) -> int:
    system = SYSTEMS[args.system]
    data = _load(args)
    run = config_options(args, SharedOptions, skip=_NOT_FLAGS)
    taught = teach(system.name, data, **_run_options(args, system.ray), **run, **config_options(args, system.config))
    for c in taught.report.get("claims", []):
        numbers = ", ".join(f"{k} {v:g}" for k, v in c.items() if k not in ("claim", "holds"))
        print(f"{'holds' if c['holds'] else 'does not hold'}: {c['claim']} ({numbers})")
    print(
        f"wrote models/, labels.safetensors, report.json and teach.png ({system.name}, {data.info.name}) to "
        f"{args.out} in {taught.report['seconds']:.0f} s"
    )
    return 0


_NOT_FLAGS = ("progress", "data_root", "download")
"""Run options the command line sets itself (progress: always) or takes with the dataset's options."""


def _add_distill_shared(p: argparse.ArgumentParser, method) -> None:
    shared = p.add_argument_group("options of every method")
    _add_data_args(shared, required=False, unless="--preset names one")
    shared.add_argument("--zca", action="store_true", help="distil in ZCA-whitened space (the set carries the ZCA)")
    budget = method.config.ITERATIONS_HELP or method.config.ITERATIONS
    helps = {
        "out": "output directory (set, grid.png, history.json, checkpoint/)",
        "preset": f"named settings of the papers: {', '.join(method.presets) or 'none'}",
        "iterations": f"outer iterations (default: the preset's, else {budget})",
    }
    add_config_options(shared, RunOptions, None, skip=_NOT_FLAGS, helps=helps)
    shared.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="R",
        help="after distilling, train R fresh nets by the set's recipe and report",
    )
    if method.ray:
        _add_ray_arg(shared, "the method's independent parts run as Ray tasks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distilset", description="Dataset distillation: learn tiny training sets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("datasets", help="list dataset sources and whether their files are present here")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets, flags=_flags_of_parser(p))

    p = sub.add_parser("baseline", help="build a baseline set (random, mean, kmeans, herding, full)")
    p.add_argument("method", choices=BASELINES)
    _add_data_args(p)
    p.add_argument("--ipc", type=int, default=None, help="images per class (default: 10; with --like, the set's)")
    p.add_argument(
        "--like",
        metavar="DIR",
        default=None,
        help="random only: as many images as the set in DIR, with its net and training recipe, so the "
        "two are scored like for like (distilset.random_real_like)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the set or run already in --out")
    p.add_argument("--zca", action="store_true", help="ZCA-whiten the data (the set carries the matrix)")
    _add_run_args(p)
    p.set_defaults(func=cmd_baseline, flags=_flags_of_parser(p))

    p = sub.add_parser("experts", help="train MTT's expert trajectories")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="experts directory (resumable: finished experts are kept)")
    p.add_argument("--experts", type=int, default=5, help="number of experts (default: 5)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete the experts in --out (files and manifest only), train anew"
    )
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened data")
    _add_ray_arg(p, "each expert is a Ray task")
    _add_run_args(p)
    add_config_options(p, ExpertConfig, "expert training")
    p.set_defaults(func=cmd_experts, flags=_flags_of_parser(p))

    p = sub.add_parser(
        "teacher",
        help="train a teacher for the teacher recipe and sre2l/rded (SRe2L's squeeze)",
        description="Train a teacher on all training images: the network whose soft labels the "
        "teacher recipe distils (`evaluate --teacher DIR`, `distill sre2l|rded --teacher "
        "DIR`).",
    )
    _add_data_args(p)
    p.add_argument("--out", required=True, help="teacher directory (teacher.safetensors, teacher.json, checkpoint/)")
    p.add_argument("--zca", action="store_true", help="train on ZCA-whitened data")
    p.add_argument("--resume", action="store_true", help="continue the teacher in --out from its last epoch")
    p.add_argument("--overwrite", action="store_true", help="replace the teacher or run already in --out")
    _add_run_args(p)
    add_config_options(p, TeacherConfig, "teacher training")
    p.set_defaults(func=cmd_teacher, flags=_flags_of_parser(p))

    p = sub.add_parser(
        "distill", help="distill a dataset into a small synthetic set with METHOD", description=DISTILL_DESCRIPTION
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", parser_class=_Parser)
    for method in METHODS.values():
        m = methods.add_parser(method.name, help=method.summary, description=method.summary)
        _add_distill_shared(m, method)
        add_config_options(m, method.config, f"{method.name} options")
        m.set_defaults(func=cmd_distill, flags=_flags_of_parser(m))

    p = sub.add_parser(
        "teach",
        help="teacher-student systems: distil trained models into labels (SYSTEM)",
        description="Teacher-student systems that distil knowledge from trained models into labels "
        "and train students on them.",
    )
    systems = p.add_subparsers(dest="system", required=True, metavar="SYSTEM", parser_class=_Parser)
    for system in SYSTEMS.values():
        m = systems.add_parser(system.name, help=system.summary, description=system.summary)
        shared = m.add_argument_group("options of every system")
        _add_data_args(shared)
        helps = {"out": "output directory (models/, labels, report.json, teach.png)"}
        add_config_options(shared, SharedOptions, None, skip=_NOT_FLAGS, helps=helps)
        if system.ray:
            _add_ray_arg(shared, "its independent parts run as Ray tasks and actors")
        add_config_options(m, system.config, f"{system.name} options")
        m.set_defaults(func=cmd_teach, flags=_flags_of_parser(m))

    p = sub.add_parser("evaluate", help="train fresh nets on a saved set and report test accuracy")
    p.add_argument("dir", help="directory holding synset.json and synset.safetensors")
    _add_data_args(p, required=False, unless="the set names a registered dataset, which is then used")
    p.add_argument("--net", default=None, help="network (default: the set's own, else convnet)")
    p.add_argument(
        "--nets",
        default=None,
        metavar="A,B,...",
        help="evaluate with each of these networks (e.g. convnet,convnet-bn,lenet,mlp,resnet18): a table "
        "and the mean over the nets the set was not made with",
    )
    p.add_argument(
        "--net-arg", action="append", type=_key_value, metavar="KEY=VALUE", help="network option, e.g. width=32"
    )
    _add_ray_arg(p, "each repeat (with --nets, each network) is a Ray task")
    p.add_argument("--repeats", type=int, default=5, help="fresh networks to train (default: 5)")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="recipe: the set's own training recipe (default); standard: DC's protocol; teacher: soft "
        "labels of a teacher on augmented views (the default with --teacher)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="DIR",
        help="teacher for the teacher recipe: a directory from `distilset teacher` (or a set carrying "
        "one); trains any set, random real images included, against its soft labels",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="arithmetic of the nets' training and test: auto (bfloat16 autocast on a CPU with native bfloat16, "
        "else float32; the default, measured at accuracy parity), float32, bfloat16; a replay runs in float32",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--save", action="store_true", help="append the result to DIR/evaluations.json (--scores: DIR/scores.json)"
    )
    scoring = p.add_argument_group("DD-Ranking's robust scores (distilset.scores)")
    scoring.add_argument(
        "--scores",
        action="store_true",
        help="HLR, IOR, LRS and ARS: the set and random real images of its count by its recipe, with and without "
        "augmentation, with hard labels, and the full data (cached)",
    )
    scoring.add_argument("--lrs-weight", type=float, default=0.5, help="w of LRS: weight of IOR against HLR (0.5)")
    scoring.add_argument(
        "--ars-gamma", type=float, default=0.5, help="gamma of ARS: weight of the runs with augmentation (0.5)"
    )
    scoring.add_argument(
        "--full-steps", type=int, default=FULL_STEPS, help=f"most minibatch steps of the full-data run ({FULL_STEPS})"
    )
    _add_run_args(p)
    add_config_options(
        p,
        Standard,
        "training options (override the chosen standard or teacher recipe)",
        default_text="the set's recipe, DC's protocol with --protocol standard, or the teacher recipe's",
    )
    add_config_options(
        p,
        Teacher,
        "teacher recipe options (with --teacher or --protocol teacher)",
        default_text="the set's teacher recipe, else the defaults for its size",
        skip=tuple(s.name for s in field_specs(Standard)),
    )
    p.set_defaults(func=cmd_evaluate, flags=_flags_of_parser(p))

    p = sub.add_parser(
        "relabel",
        help="store the teacher recipe's views and soft labels with a set (FKD)",
        description="Compute the teacher recipe's augmented views of a set and the teacher's soft "
        "labels of them once, and store them with the set (views.safetensors), so that "
        "training on it runs no teacher.",
    )
    p.add_argument("dir", help="set directory (its teacher and recipe are used unless --teacher is given)")
    p.add_argument("--teacher", default=None, metavar="DIR", help="teacher directory (default: the set's own)")
    p.add_argument("--top-k", type=int, default=None, help="probabilities kept per view (default: all, at most 100)")
    _add_data_args(p, required=False, unless="the set names a registered dataset, which is then used")
    _add_run_args(p)
    p.set_defaults(func=cmd_relabel, flags=_flags_of_parser(p))

    p = sub.add_parser("import", help="read a set another project wrote (MTT, DC/DSA/DM, image folders, pt, npz)")
    p.add_argument(
        "format",
        choices=IMPORT_FORMATS,
        help="mtt: images_best.pt and labels_best.pt in PATH; dc: a "
        "res_*.pt of DC, DSA or DM; folder: a folder per class; pt / npz: images and labels",
    )
    p.add_argument("path", help="the file or directory to read")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="directory to write the set to")
    p.add_argument("--overwrite", action="store_true", help="replace the set already in --out")
    p.add_argument("--index", type=int, default=0, help="dc: which experiment of the results file (default: 0)")
    p.add_argument(
        "--variant",
        choices=("dc", "dsa", "dm"),
        default="dc",
        help="dc: the method that made it, which sets the recipe's DSA (default: dc, none)",
    )
    p.add_argument("--zca", action="store_true", help="mtt: the images are ZCA-whitened (load the data with ZCA)")
    p.set_defaults(func=cmd_import, flags=_flags_of_parser(p))

    p = sub.add_parser("export", help="write a set as image folders, npz or pt, for other projects")
    p.add_argument("dir", help="set directory")
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        required=True,
        help="folder: PNG per class and labels.json; npz / pt: the tensors and normalisation",
    )
    p.add_argument("--out", required=True, help="the file (npz, pt) or new directory (folder) to write")
    p.set_defaults(func=cmd_export, flags=_flags_of_parser(p))

    p = sub.add_parser("report", help="one self-contained HTML page: pictures, curves, evaluations, comparison")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="set directories (distill, baseline)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--title", default="distilset report", help="page title")
    p.set_defaults(func=cmd_report, flags=_flags_of_parser(p))
    return parser


def _foreign_option_error(args: argparse.Namespace, extra: list[str]) -> UsageError:
    """An option the subcommand does not have: say which other command has it, or what is close."""
    option = next((t.split("=", 1)[0] for t in extra if t.startswith("-")), extra[0])
    own = set(getattr(args, "flags", {}).values())  # every option of the subcommand, shared ones too
    close = difflib.get_close_matches(option, sorted(own), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    if getattr(args, "command", None) != "distill":
        command = f"teach {args.system}" if args.command == "teach" else args.command
        return UsageError(f"unrecognized argument(s): {' '.join(extra)}{hint} (see `distilset {command} --help`)")
    owners = sorted(m.name for m in METHODS.values() if option in flags_of(m.config).values())
    if owners:
        return UsageError(
            f"{option} is not an option of `distill {args.method}` (it belongs to {', '.join(owners)}); "
            f"`distilset distill {args.method} --help` lists its options"
        )
    return UsageError(
        f"unrecognized option {option} for `distill {args.method}`{hint} (see `distilset distill {args.method} --help`)"
    )


def _render(error: DistilsetError, flags: Mapping[str, str]) -> str:
    return error.render(flags)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    tune_allocator()
    flags: Mapping[str, str] = {}
    try:
        args, extra = parser.parse_known_args(argv)
        flags = getattr(args, "flags", {})
        if extra:
            raise _foreign_option_error(args, extra)
        if hasattr(args, "device"):
            _check_device(args.device)
        if world_size() > 1:  # under torchrun
            if args.command != "distill":
                raise UsageError(
                    f"`{args.command}` runs in one process; under torchrun only `distill` runs, with "
                    f"one of {', '.join(data_parallel_methods())}"
                )
            _, args.device = init_from_env(getattr(args, "device", "cpu"))
        return args.func(args)
    except Interrupted as e:
        print(f"distilset: {_render(e, flags)}", file=sys.stderr)
        return 130
    except DistilsetError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"distilset: error: {_render(e, flags)}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only directory, a full disk, a path under a file: the system's reason, one line
        if os.environ.get("RANK", "0") == "0":
            where = f" ({e.filename})" if e.filename else ""
            print(
                f"distilset: error: the system refused{where}: {e.strerror or e}; check the path, its "
                "permissions and the free space",
                file=sys.stderr,
            )
        return 2
    except KeyboardInterrupt:
        print("distilset: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_config_options", "build_parser", "config_options", "flags_of", "main"]
