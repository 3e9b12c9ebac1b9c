"""Hostile and corrupt input files (issue 10, items 4, 5 and 8 for inputs): every one gives one line
``distilset: error: ...`` and exit status 2, or succeeds with a valid result; never a traceback, never a silent
chance result, never a write outside the test's directory.

The fixed cases each name a file the old code got wrong; the fuzz tests (hypothesis) mutate a valid saved set,
an expert manifest and npz files. ``DISTILSET_FUZZ_EXAMPLES`` sets the fuzz budget (default small).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import distilset as ds
from distilset.cli import main
from distilset.methods.experts import MANIFEST, ExpertConfig, expert_path, train_experts
from distilset.nets import create_net
from distilset.recipes import Replay, Standard
from distilset.synset import META_FILE, TENSOR_FILE, SyntheticSet

FUZZ_EXAMPLES = int(os.environ.get("DISTILSET_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    deadline=None,
    max_examples=FUZZ_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
EVAL = ["--dataset", "digits", "--repeats", "1", "--json"]  # the dataset is always named: the set's is only a hint


def _eval(which: str) -> list[str]:
    """evaluate's options: one repeat, one epoch (replay sets replay their two steps)."""
    return EVAL if which == "replay" else [*EVAL, "--epochs", "1"]


# Cases the code before this file (5f6a2ff) already refused in one line, kept as guards; every other fixed case
# below failed there (a traceback, a silent result, or a run that trained on instead of refusing).
HELD_BEFORE = {
    "hard labels int32", "mean with two channels", "net name unknown", "recipe a list", "recipe lr fast",
    "recipe momentum NaN", "top level a list", "dsa_strategy 7", "v1 dsa_strategy 7", "v1 train_lr fast",
    "config net unknown", "epochs not a number", "manifest a list", "manifest random bytes", "not an npz",
}  # fmt: skip


# ---- running the CLI and watching what it touches --------------------------------------------------------------
class _Writes:
    """Records every file opened for writing (and every rename target) outside ``allowed`` while active."""

    active: Path | None = None
    outside: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active is None:
            return
        target = None
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                target = args[0]
        elif event in ("os.rename", "os.replace", "os.symlink", "os.link"):
            target = args[1]
        if target is not None:
            path = Path(os.fsdecode(target)).absolute()
            if not path.is_relative_to(cls.active) and not str(path).startswith("/dev/"):
                cls.outside.append(str(path))


sys.addaudithook(_Writes.hook)


def _cli(capsys, root: Path, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with writes outside ``root`` recorded; an exception (a traceback) fails the test."""
    capsys.readouterr()
    _Writes.active, _Writes.outside = root.absolute(), []
    try:
        code = main([str(a) for a in argv])
    except BaseException:  # noqa: BLE001 - any escape is the bug under test
        pytest.fail(f"traceback instead of one error line:\n{traceback.format_exc()}")
    finally:
        _Writes.active = None
    out, err = capsys.readouterr()
    assert not _Writes.outside, f"wrote outside the test directory: {_Writes.outside}"
    assert "Traceback" not in err
    return code, out, err


def _refused(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("distilset: error:"), (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _refused_or_valid_eval(code: int, out: str, err: str) -> str:
    """Either one error line ("refused"), or a finished evaluation with a real accuracy ("valid")."""
    if code == 2:
        _refused(code, err)
        return "refused"
    assert code == 0, (code, err)
    result = json.loads(out)
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and len(result["runs"]) == 1
    return "valid"


@pytest.fixture(autouse=True)
def _contained(tmp_path, monkeypatch):
    """Run from the test's directory with a home and data root there, so nothing needs to be written elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILSET_DATA_ROOT", str(tmp_path / "data"))


# ---- valid sets to damage --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sets(tmp_path_factory, digits):
    """Saved sets on digits: plain (standard recipe), soft-labelled, ZCA, and a fixed-init replay set."""
    root = tmp_path_factory.mktemp("sets")
    plain = ds.baseline("random", digits, ipc=1, seed=0)
    plain.save(root / "plain", grid=False)
    soft = SyntheticSet(plain.images, torch.eye(10)[plain.labels] * 0.9 + 0.01, plain.class_names, plain.norm,
                        dataset="digits", recipe=Standard(epochs=2))  # fmt: skip
    soft.save(root / "soft", grid=False)
    ds.baseline("random", digits.with_zca(), ipc=1, seed=0).save(root / "zca", grid=False)
    net = create_net("mlp", (1, 8, 8), 10, seed=0, width=32)
    replay = SyntheticSet(plain.images, plain.labels, plain.class_names, plain.norm, dataset="digits",
                          recipe=Replay(init="fixed"), lrs=torch.tensor([0.1, 0.05]),
                          step_order=torch.arange(10).repeat(2, 1),
                          init_params={k: v.clone() for k, v in net.state_dict().items()},
                          net={"name": "mlp", "kwargs": {"width": 32}, "init": "default"})  # fmt: skip
    replay.save(root / "replay", grid=False)
    return root


def _copy(sets: Path, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(sets / name, dst)
    return dst


def _edit_json(d: Path, edit) -> None:
    meta = json.loads((d / META_FILE).read_text())
    edit(meta)
    (d / META_FILE).write_text(json.dumps(meta))


def _edit_tensors(d: Path, edit) -> None:
    """Change the tensors and list them truthfully, so the check under test (not the listing) must catch it."""
    tensors = load_file(str(d / TENSOR_FILE))
    edit(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(d / TENSOR_FILE), metadata={"format": "distilset.synset"})
    listing = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()}
    _edit_json(d, lambda m: m.__setitem__("tensors", listing))


def _set(key, value):
    return lambda t: t.__setitem__(key, value(t) if callable(value) else value)


def _first_init(t) -> str:
    return next(k for k in sorted(t) if k.startswith("init."))


def _nan_init(t):
    k = _first_init(t)
    t[k] = t[k].clone()
    t[k].view(-1)[0] = float("nan")


def _transposed_init(t):
    k = next(k for k in sorted(t) if k.startswith("init.") and t[k].ndim == 2)
    t[k] = t[k].T.contiguous()


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


TENSOR_CASES = {
    "images float16": ("plain", _set("images", lambda t: t["images"].half()), ["images", "float32", ".float()"]),
    "images bfloat16": ("plain", _set("images", lambda t: t["images"].bfloat16()), ["images", "float32"]),
    "images float64": ("plain", _set("images", lambda t: t["images"].double()), ["images", "float32"]),
    "images (N, 64)": ("plain", _set("images", lambda t: t["images"].reshape(10, 64)), ["images", "(N, C, H, W)"]),
    "hard labels int32": ("plain", _set("labels", lambda t: t["labels"].int()), ["labels", "int64"]),
    "soft labels float16": ("soft", _set("labels", lambda t: t["labels"].half()), ["labels", "float32"]),
    "negative soft labels": ("soft", _set("labels", lambda t: t["labels"] * 2 - 0.1), ["labels", "distribution"]),
    "soft labels not summing to 1": ("soft", _set("labels", lambda t: t["labels"] * 3), ["labels", "sum to 1"]),
    "NaN in init weights": ("replay", _nan_init, ["init.", "NaN"]),
    "init weights of another net": ("replay", _transposed_init, ["init.", "shape"]),
    "init weights float16": (
        "replay",
        lambda t: t.update({k: v.half() for k, v in t.items() if "init." in k}),
        ["init.", "float32"],
    ),  # fmt: skip
    "learned lrs of 1e30": ("replay", _set("lrs", lambda t: t["lrs"] * 1e31), ["lrs", "1000"]),
    "negative learned lrs": ("replay", _set("lrs", lambda t: -t["lrs"]), ["lrs"]),
    "NaN in ZCA matrix": ("zca", _set("zca.matrix", lambda t: t["zca.matrix"] * float("nan")), ["zca.matrix", "NaN"]),
    "inf in ZCA mean": ("zca", _set("zca.mean", lambda t: t["zca.mean"] + float("inf")), ["zca.mean"]),
    "ZCA matrix removed": ("zca", lambda t: t.pop("zca.matrix"), ["zca.matrix", "zca.mean"]),
    "ZCA matrix float64": ("zca", _set("zca.matrix", lambda t: t["zca.matrix"].double()), ["zca.matrix", "float32"]),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_corrupt_set_tensors_are_one_line(sets, tmp_path, capsys, case):
    which, edit, needles = TENSOR_CASES[case]
    d = _copy(sets, which, tmp_path)
    _edit_tensors(d, edit)
    assert _refused(*_cli(capsys, tmp_path, "evaluate", d, *_eval(which))[::2], *needles)


def _v1(meta):
    """A version-1 file: no typed recipe, a train_lr instead."""
    meta["version"] = 1
    del meta["recipe"]
    meta["train_lr"] = 0.01


JSON_CASES = {
    "std 0": ("plain", lambda m: m.update(std=[0]), ["std", "> 0"]),
    "mean NaN": ("plain", lambda m: m.update(mean=[float("nan")]), ["mean", "finite"]),
    "mean a string": ("plain", lambda m: m.update(mean="x"), ["mean", "list of numbers"]),
    "mean of strings": ("plain", lambda m: m.update(mean=["0.5"]), ["mean", "list of numbers"]),
    "mean with two channels": ("plain", lambda m: m.update(mean=[0.1, 0.2], std=[1, 1]), ["mean", "channel"]),
    "std null": ("plain", lambda m: m.update(std=None), ["std"]),
    "std 1e30": ("plain", lambda m: m.update(std=[1e30]), ["std", "10000"]),
    "mean 1e30": ("plain", lambda m: m.update(mean=[1e30]), ["mean", "10000"]),
    "recipe epochs 1e9": ("plain", lambda m: m["recipe"].update(epochs=10**9), ["epochs", "100000"]),
    "recipe steps 1e12": ("plain", lambda m: m["recipe"].update(steps=10**12), ["steps", "1e+08"]),
    "recipe batch 1e9": ("plain", lambda m: m["recipe"].update(batch_size=10**9), ["batch_size", "1e+06"]),
    "class_names null": ("plain", lambda m: m.update(class_names=None), ["class_names", "list of strings"]),
    "class_names numbers": ("plain", lambda m: m.update(class_names=list(range(10))), ["class_names", "strings"]),
    "class_names too few": ("plain", lambda m: m.update(class_names=["a", "b"]), ["class_names"]),
    "soft set with extra class names": (
        "soft",
        lambda m: m.update(class_names=list("abcdefghijk")),
        ["class_names", "11", "10"],
    ),  # fmt: skip
    "recipe lr Infinity": ("plain", lambda m: m["recipe"].update(lr=float("inf")), ["lr", "finite"]),
    "recipe lr fast": ("plain", lambda m: m["recipe"].update(lr="fast"), ["lr", "number"]),
    "recipe momentum NaN": ("plain", lambda m: m["recipe"].update(momentum=float("nan")), ["momentum"]),
    "recipe a list": ("plain", lambda m: m.update(recipe=[1, 2]), ["recipe"]),
    "dsa_strategy 7": ("plain", lambda m: m["recipe"].update(dsa=7), ["dsa", "string"]),
    "dsa_strategy unknown op": ("plain", lambda m: m["recipe"].update(dsa="color_zoom"), ["dsa", "zoom"]),
    "v1 train_lr Infinity": ("plain", lambda m: (_v1(m), m.update(train_lr=float("inf"))), ["lr", "finite"]),
    "v1 train_lr fast": ("plain", lambda m: (_v1(m), m.update(train_lr="fast")), ["lr", "number"]),
    "v1 dsa_strategy 7": ("plain", lambda m: (_v1(m), m.update(dsa_strategy=7)), ["dsa", "string"]),
    "net a list": ("replay", lambda m: m.update(net=[1, 2]), ["net must be an object"]),
    "net name unknown": ("replay", lambda m: m["net"].update(name="vgg99"), ["net", "vgg99"]),
    "net kwargs a list": ("replay", lambda m: m["net"].update(kwargs=[1]), ["net", "kwargs"]),
    "net width 1e7": ("replay", lambda m: m["net"]["kwargs"].update(width=1e7), ["width", "4096"]),
    "net width -5": ("replay", lambda m: m["net"]["kwargs"].update(width=-5), ["width", "4096"]),
    "net depth 100": ("replay", lambda m: m["net"]["kwargs"].update(depth=100), ["depth", "8"]),
    "net init bogus": ("replay", lambda m: m["net"].update(init="he"), ["net", "init"]),
    "deeply nested config": ("plain", lambda m: m.update(config={"a": _nested(40)}), ["nested"]),
    "deeply nested extra": ("plain", lambda m: m.update(extra={"a": _nested(60)}), ["nested"]),
    "tensor listing a list": ("plain", lambda m: m.update(tensors=["images", "labels"]), ["tensors"]),
    "tensor listing entry a string": ("plain", lambda m: m["tensors"].update(images="float32"), ["tensors"]),
    "version true": ("plain", lambda m: m.update(version=True), ["version"]),
    "extra a string": ("plain", lambda m: m.update(extra="x"), ["extra"]),
    "config a list": ("plain", lambda m: m.update(config=[1]), ["config"]),
    "dataset a number": ("plain", lambda m: m.update(dataset=3), ["dataset", "string"]),
    "zca_eps a string": ("zca", lambda m: m.update(zca_eps="x"), ["zca_eps"]),
    "top level a list": ("plain", lambda m: m.clear() or m.update(x=1), ["format"]),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_corrupt_set_metadata_is_one_line(sets, tmp_path, capsys, case):
    which, edit, needles = JSON_CASES[case]
    d = _copy(sets, which, tmp_path)
    _edit_json(d, edit)
    assert _refused(*_cli(capsys, tmp_path, "evaluate", d, *_eval(which))[::2], *needles)


def test_deeply_nested_json_text_is_one_line(sets, tmp_path, capsys):
    d = _copy(sets, "plain", tmp_path)
    text = (d / META_FILE).read_text().rstrip().removesuffix("}") + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (d / META_FILE).write_text(text)
    assert _refused(*_cli(capsys, tmp_path, "evaluate", d, *_eval("plain"))[::2], "synset.json")


@pytest.mark.parametrize("which", ["plain", "soft", "zca", "replay"])
def test_the_valid_sets_evaluate(sets, tmp_path, capsys, which):
    """The undamaged fixtures pass, so every refusal above is the damage's doing."""
    d = _copy(sets, which, tmp_path)
    code, out, err = _cli(capsys, tmp_path, "evaluate", d, *_eval(which))
    assert code == 0, err
    assert _refused_or_valid_eval(code, out, err)


def test_a_sets_dataset_is_never_opened_unless_the_user_names_it(sets, tmp_path, capsys, monkeypatch):
    """A set naming ``npz:/some/path`` must not make ``evaluate`` open that path by itself."""
    secret = tmp_path / "secret.npz"
    np.savez(secret, x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 10)
    d = _copy(sets, "plain", tmp_path)
    _edit_json(d, lambda m: m.update(dataset=f"npz:{secret}"))
    opened: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(str(f)) or real_load(f, *a, **k))
    code, _, err = _cli(capsys, tmp_path, "evaluate", d, "--repeats", "1", "--epochs", "1", "--json")
    assert str(secret) not in opened and code == 2 and "--dataset" in err


# ---- expert trajectories --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experts(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("experts")
    train_experts(digits, out, 1, ExpertConfig(net="mlp", net_kwargs={"width": 16}, epochs=2, batch_size=128))
    return out


MTT_ARGS = ["--dataset", "digits", "--ipc", "1", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1"]
MTT_ARGS += ["--iterations", "1"]


def _mtt(capsys, tmp_path, experts_dir: Path):
    return _cli(capsys, tmp_path, "distill", "mtt", *MTT_ARGS, "--experts-dir", experts_dir, "--out", tmp_path / "o")


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / MANIFEST).read_text())
    edit(m)
    (d / MANIFEST).write_text(json.dumps(m))


def _expert_tensors(edit):
    def apply(d: Path):
        t = load_file(str(expert_path(d, 0)))
        edit(t)
        save_file({k: v.contiguous() for k, v in t.items()}, str(expert_path(d, 0)))

    return apply


EXPERT_CASES = {
    "manifest random bytes": (lambda d: (d / MANIFEST).write_bytes(bytes(range(256)) * 3), ["manifest.json"]),
    "manifest a list": (lambda d: (d / MANIFEST).write_text("[2]"), ["manifest.json"]),
    "manifest without config": (lambda d: _edit_manifest(d, lambda m: m.pop("config")), ["config"]),
    "manifest without params": (lambda d: _edit_manifest(d, lambda m: m.pop("params")), ["params"]),
    "manifest without dataset": (lambda d: _edit_manifest(d, lambda m: m.pop("dataset")), ["dataset"]),
    "epochs not a number": (lambda d: _edit_manifest(d, lambda m: m["config"].update(epochs="many")), ["epochs"]),
    "epochs 1e9": (lambda d: _edit_manifest(d, lambda m: m["config"].update(epochs=10**9)), ["epochs"]),
    "config net unknown": (lambda d: _edit_manifest(d, lambda m: m["config"].update(net="vgg99")), ["net"]),
    "absurd parameter shapes": (
        lambda d: _edit_manifest(d, lambda m: m["params"][0].__setitem__(1, [10**9, 10**9])),
        ["params"],
    ),  # fmt: skip
    "parameter shape of strings": (
        lambda d: _edit_manifest(d, lambda m: m["params"][0].__setitem__(1, ["a"])),
        ["params"],
    ),  # fmt: skip
    "params a dict": (lambda d: _edit_manifest(d, lambda m: m.update(params={"a": 1})), ["params"]),
    "expert id not a number": (lambda d: _edit_manifest(d, lambda m: m["experts"].update(x={})), ["experts"]),
    "experts a list": (lambda d: _edit_manifest(d, lambda m: m.update(experts=[0])), ["experts"]),
    "zca not a bool": (lambda d: _edit_manifest(d, lambda m: m.update(zca="no")), ["zca"]),
    "expert vector too short": (
        _expert_tensors(lambda t: t.update({k: v[:-3] for k, v in t.items()})),
        ["expert 0", "distilset experts"],
    ),  # fmt: skip
    "expert vector NaN": (
        _expert_tensors(lambda t: t.update({k: v * float("nan") for k, v in t.items()})),
        ["expert 0", "NaN"],
    ),  # fmt: skip
    "expert vector int64": (
        _expert_tensors(lambda t: t.update({k: v.long() for k, v in t.items()})),
        ["expert 0", "float"],
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(EXPERT_CASES))
def test_damaged_experts_are_one_line(experts, tmp_path, capsys, case):
    damage, needles = EXPERT_CASES[case]
    d = tmp_path / "experts"
    shutil.copytree(experts, d)
    damage(d)
    assert _refused(*_mtt(capsys, tmp_path, d)[::2], *needles)


def test_the_valid_experts_distill(experts, tmp_path, capsys):
    d = tmp_path / "experts"
    shutil.copytree(experts, d)
    code, _, err = _mtt(capsys, tmp_path, d)
    assert code == 0, err


# ---- data files ------------------------------------------------------------------------------------------------
def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _digits_arrays(n: int = 200, classes: int = 10):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8)).astype(np.uint8), np.arange(n) % classes


def _labels(y):
    return lambda d: _npz(d / "d.npz", x_train=_digits_arrays()[0], y_train=np.asarray(y))


NPZ_CASES = {
    "object arrays": (
        lambda d: _npz(d / "d.npz", x_train=np.array([None, 1], dtype=object), y_train=np.arange(2)),
        ["pickle"],
    ),  # fmt: skip
    "labels -1": (_labels(np.where(np.arange(200) == 5, -1, np.arange(200) % 10)), ["y_train", "-1"]),
    "labels of 10**9": (_labels(np.where(np.arange(200) == 5, 10**9, np.arange(200) % 10)), ["up to 1000000000"]),
    "labels beyond the class names": (
        lambda d: _npz(
            d / "d.npz", x_train=_digits_arrays()[0], y_train=_digits_arrays()[1], class_names=np.array(["a", "b"])
        ),
        ["class_names"],
    ),  # fmt: skip
    "fractional labels": (_labels(np.arange(200) % 10 + 0.5), ["y_train", "whole"]),
    "string labels": (_labels(np.array([str(i % 10) for i in range(200)])), ["y_train"]),
    "string pixels": (
        lambda d: _npz(d / "d.npz", x_train=np.full((200, 8, 8), "a"), y_train=np.arange(200) % 10),
        ["x_train", "numbers"],
    ),  # fmt: skip
    "NaN pixels": (
        lambda d: _npz(d / "d.npz", x_train=np.full((200, 8, 8), np.nan, np.float32), y_train=np.arange(200) % 10),
        ["x_train", "NaN"],
    ),  # fmt: skip
    "0 images": (
        lambda d: _npz(d / "d.npz", x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64)),
        ["x_train", "no images"],
    ),  # fmt: skip
    "200 images, 150 labels": (
        lambda d: _npz(d / "d.npz", x_train=_digits_arrays()[0], y_train=np.arange(150) % 10),
        ["200", "150"],
    ),  # fmt: skip
    "a single class": (
        lambda d: _npz(d / "d.npz", x_train=_digits_arrays()[0], y_train=np.zeros(200, np.int64)),
        ["2 classes"],
    ),  # fmt: skip
    "test labels out of range": (
        lambda d: _npz(
            d / "d.npz",
            x_train=_digits_arrays()[0],
            y_train=np.arange(200) % 10,
            x_test=_digits_arrays(20)[0],
            y_test=np.arange(20) + 5,
        ),
        ["y_test"],
    ),  # fmt: skip
    "not an npz": (lambda d: (d / "d.npz").write_bytes(b"PK\x03\x04garbage"), ["npz"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_npz_files_are_one_line(tmp_path, capsys, case):
    make, needles = NPZ_CASES[case]
    make(tmp_path)
    argv = ["baseline", "random", "--dataset", f"npz:{tmp_path / 'd.npz'}", "--ipc", "1", "--out", tmp_path / "o"]
    assert _refused(*_cli(capsys, tmp_path, *argv)[::2], *needles)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (grey, 8 bit) with almost no pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / "imgs" / c / f"{i}.png")
    return root / "imgs"


def _truncate(f: Path) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(f)
    f.write_bytes(f.read_bytes()[:200])


FOLDER_CASES = {
    "a text file named .png": (lambda f: f.write_text("hello, not an image"), ["x.png", "image"]),
    "a truncated PNG": (_truncate, ["x.png"]),
    "a 20000x20000 image": (lambda f: _png_header_only(f, 20000, 20000), ["x.png", "pixels", "resize"]),
    "a 5000x5000 image": (lambda f: _png_header_only(f, 5000, 5000), ["x.png", "5000x5000", "resize"]),
    "an empty file": (lambda f: f.write_bytes(b""), ["x.png"]),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_bad_image_folders_are_one_line(tmp_path, capsys, case):
    make, needles = FOLDER_CASES[case]
    root = _image_folder(tmp_path)
    make(root / "a" / "x.png")
    argv = ["baseline", "random", "--dataset", f"folder:{root}", "--ipc", "1", "--out", tmp_path / "o"]
    assert _refused(*_cli(capsys, tmp_path, *argv)[::2], *needles)


def test_an_empty_class_folder_is_named(tmp_path, capsys):
    root = _image_folder(tmp_path)
    (root / "b0-empty").mkdir()  # sorts between a and b: class 1
    argv = ["baseline", "random", "--dataset", f"folder:{root}", "--ipc", "1", "--out", tmp_path / "o"]
    code, _, err = _cli(capsys, tmp_path, *argv)
    assert _refused(code, err, "class folder 'b0-empty' holds no images", "remove the folder")
    assert "or less" not in err


def test_the_valid_data_files_load(tmp_path, capsys):
    x, y = _digits_arrays()
    _npz(tmp_path / "d.npz", x_train=x, y_train=y)
    argv = ["baseline", "random", "--ipc", "1", "--dataset"]
    assert _cli(capsys, tmp_path, *argv, f"npz:{tmp_path / 'd.npz'}", "--out", tmp_path / "o1")[0] == 0
    assert _cli(capsys, tmp_path, *argv, f"folder:{_image_folder(tmp_path)}", "--out", tmp_path / "o2")[0] == 0


# ---- fuzzing -----------------------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _paths(obj, prefix=()):
    """Every (path, value) in a json document, containers included."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _replace_at(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


@FUZZ
@given(which=st.sampled_from(["plain", "soft", "replay", "zca"]), data=st.data())
def test_fuzz_set_json_values(sets, tmp_path_factory, capsys, which, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = _copy(sets, which, tmp)
    meta = json.loads((d / META_FILE).read_text())
    spots = [p for p, _ in _paths(meta) if p and p[0] != "tensors"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(spots))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier draw replaced a container here
            _replace_at(meta, path, data.draw(JSON_VALUES))
    (d / META_FILE).write_text(json.dumps(meta))
    assert _refused_or_valid_eval(*_cli(capsys, tmp, "evaluate", d, *_eval(which)))


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8]


@FUZZ
@given(which=st.sampled_from(["plain", "soft", "replay", "zca"]), data=st.data())
def test_fuzz_set_tensors(sets, tmp_path_factory, capsys, which, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = _copy(sets, which, tmp)
    names = sorted(load_file(str(d / TENSOR_FILE)))
    name = data.draw(st.sampled_from(names))
    how = data.draw(st.sampled_from(["dtype", "shape", "value", "drop"]))
    dtype = data.draw(st.sampled_from(DTYPES))
    value = data.draw(st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e30, 3.0, -1e9]))

    def edit(t):
        v = t[name]
        if how == "dtype":
            t[name] = v.to(dtype)
        elif how == "shape":
            t[name] = v.reshape(-1) if v.ndim > 1 else v.reshape(1, -1)
        elif how == "value":
            w = v.clone()
            whole = int(value) if abs(value) <= 1e9 else -1  # NaN and inf compare false: -1
            w.view(-1)[0] = value if w.is_floating_point() else whole
            t[name] = w
        else:
            del t[name]

    _edit_tensors(d, edit)
    assert _refused_or_valid_eval(*_cli(capsys, tmp, "evaluate", d, *_eval(which)))


@FUZZ
@given(which=st.sampled_from(["plain", "replay"]), data=st.data())
def test_fuzz_set_bytes(sets, tmp_path_factory, capsys, which, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = _copy(sets, which, tmp)
    target = d / data.draw(st.sampled_from([TENSOR_FILE, META_FILE]))
    raw = bytearray(target.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[i] = data.draw(st.integers(0, 255))
        else:
            del raw[i : i + data.draw(st.integers(1, 64))]
    target.write_bytes(bytes(raw))
    assert _refused_or_valid_eval(*_cli(capsys, tmp, "evaluate", d, *_eval(which)))


@FUZZ
@given(data=st.data())
def test_fuzz_expert_manifest(experts, tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    d = tmp / "experts"
    shutil.copytree(experts, d)
    manifest = json.loads((d / MANIFEST).read_text())
    path = data.draw(st.sampled_from([p for p, _ in _paths(manifest) if p]))
    _replace_at(manifest, path, data.draw(JSON_VALUES))
    (d / MANIFEST).write_text(json.dumps(manifest))
    code, _, err = _mtt(capsys, tmp, d)
    if code != 0:
        assert _refused(code, err)
    else:
        assert len(SyntheticSet.load(tmp / "o")) > 0


@FUZZ
@given(
    n=st.integers(0, 40),
    shape=st.sampled_from([(8, 8), (8, 8, 1), (1, 8, 8), (3, 4, 4), (4,), ()]),
    x_dtype=st.sampled_from(["uint8", "float32", "float64", "int64", "bool", "U2", "complex64"]),
    y=st.lists(st.integers(-3, 12) | st.floats(-2, 12), min_size=0, max_size=44),
    pixel=st.sampled_from([0.0, 1.0, 255.0, 1e6, float("nan"), -5.0]),
    names=st.none() | st.lists(st.text(max_size=3), max_size=12),
)
def test_fuzz_npz(tmp_path_factory, capsys, n, shape, x_dtype, y, pixel, names):
    tmp = tmp_path_factory.mktemp("fuzz")
    with np.errstate(invalid="ignore", over="ignore"):  # NaN cast to uint8 is part of the fuzz
        x = np.full((n, *shape), pixel).astype(x_dtype) if x_dtype != "U2" else np.full((n, *shape), "ab")
    arrays = {"x_train": x, "y_train": np.asarray(y)}
    if names is not None:
        arrays["class_names"] = np.asarray(names, dtype=str)
    _npz(tmp / "d.npz", **arrays)
    code, _, err = _cli(capsys, tmp, "baseline", "random", "--dataset", f"npz:{tmp / 'd.npz'}", "--ipc", "1",
                        "--out", tmp / "o")  # fmt: skip
    if code != 0:
        _refused(code, err)
    else:
        syn = SyntheticSet.load(tmp / "o")
        assert syn.num_classes >= 2 and torch.isfinite(syn.images).all()


def _rate_fields() -> list[tuple[str, type, str]]:
    from distilset.config import field_specs
    from distilset.methods.experts import ExpertConfig
    from distilset.methods.registry import METHODS
    from distilset.teach.base import SYSTEMS
    from distilset.teachers import TeacherConfig

    configs = [(f"distill {n}", m.config) for n, m in sorted(METHODS.items())]
    configs += [(f"teach {n}", s.config) for n, s in sorted(SYSTEMS.items())]
    configs += [("experts", ExpertConfig), ("teacher", TeacherConfig)]
    return [
        (where, cls, spec.name)
        for where, cls in configs
        for spec in field_specs(cls)
        if spec.name == "lr" or spec.name.endswith("_lr") or spec.name.startswith("lr_")
    ]


@pytest.mark.parametrize("where,cls,name", _rate_fields(), ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 0.0])
def test_every_learning_rate_is_checked_finite_and_positive_before_any_work(where, cls, name, value):
    # the options are checked as the config is made, before any data is loaded or network trained
    with pytest.raises(ds.DistilsetError, match=rf"{name}`? must be (> 0|a finite number)"):
        cls(**{name: value})


@pytest.mark.parametrize("arg", ["width=0", "width=-5", "width=100000000", "width=abc", "depth=99"])
@pytest.mark.parametrize("command", [["distill", "dm", "--iterations", "1"], ["evaluate", "SET", "--net", "convnet"]])
def test_net_size_options_are_ranged_before_any_allocation(sets, tmp_path, capsys, arg, command):
    argv = [str(sets / "plain") if a == "SET" else a for a in command]
    code = main(
        [*argv, "--dataset", "digits", "--net-arg", arg, *(["--out", str(tmp_path / "o")] * (argv[0] == "distill"))]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and "Traceback" not in err, err
    assert "must be a whole number in 1.." in err


@pytest.mark.parametrize("row", [{"accuracy_mean": 57.0}, {"accuracy_std": -0.1}, {"runs": [57.0]}])
def test_recorded_accuracies_outside_zero_to_one_are_refused(sets, tmp_path, capsys, row):
    d = _copy(sets, "plain", tmp_path)
    good = {"protocol": "recipe", "net": "mlp", "runs": [0.5], "accuracy_mean": 0.5, "accuracy_std": 0.0}
    (d / "evaluations.json").write_text(json.dumps([{**good, "wall_time_s": 1.0, **row}]))
    code = main(["report", str(d), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and "entry 0 is not an evaluation" in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("dataset", ["digits", "mnist5k", "rotten-tomatoes-sentences"])
def test_a_data_path_for_a_dataset_that_takes_none_is_refused(tmp_path, capsys, dataset):
    out = tmp_path / "o"
    code = main(["baseline", "random", "--dataset", dataset, "--data-path", "missing-dir", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and "takes no data path" in err, err
    assert not out.exists()


def test_evaluate_nets_checks_every_nets_recipe_before_training_any(sets, tmp_path, capsys, monkeypatch):
    evaluate_module = sys.modules["distilset.evaluate"]  # the package's `evaluate` is the function

    def no_training(*args, **kwargs):
        raise AssertionError("a net was trained before the options were refused")

    monkeypatch.setattr(evaluate_module, "_train_and_test", no_training)
    d = _copy(sets, "replay", tmp_path)  # its own net (mlp) replays its steps: --epochs does not apply to it
    code = main(["evaluate", str(d), "--dataset", "digits", "--nets", "lenet,convnet,mlp", "--epochs", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a process count"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a process count"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR, MASTER_PORT is not set"),
    ],
)
def test_a_torchrun_environment_without_torchrun_is_one_line(tmp_path, capsys, monkeypatch, env, needle):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["distill", "dm", "--dataset", "digits", "--iterations", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and needle in err, err


def test_a_full_rendezvous_address_without_torchrun_is_refused_not_awaited(tmp_path):
    """WORLD_SIZE=2 with RANK, MASTER_ADDR and MASTER_PORT but no torchrun: nothing would ever start rank 1, so
    joining the group would wait forever; the run is refused at once instead (a subprocess, so a hang fails)."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    env.update(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "distilset.cli", "distill", "dm", "--dataset", "digits",
                           "--iterations", "1", "--out", str(tmp_path / "o")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("distilset: error:") == 1, done.stderr
    assert "not started by torchrun" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["distill", "dm", "--preset", "nope"], "its presets: dm-paper-ipc10, dm-paper-ipc50"),
        (["distill", "dd", "--init-lr", "1e30"], "--init-lr must be <= 1000"),
    ],
)
def test_more_bad_options_are_one_line_before_any_work(tmp_path, capsys, argv, needle):
    code = main([*argv, "--dataset", "digits", "--iterations", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and needle in err and "Traceback" not in err, err
    assert "sre2l-cifar100" not in err  # another method's presets are not listed


def test_evaluate_save_into_a_directory_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    """As root a read-only mode does not stop a write, so the refusal the system gives is planted: every OSError a
    command meets (read-only directory, full disk) is one line with the system's reason, the result kept."""
    from distilset import io as io_module

    d = tmp_path / "set"
    ds.baseline("random", ds.load_dataset("digits"), ipc=2).save(d)

    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io_module, "atomic_write", refuse)
    code = main(["evaluate", str(d), "--net", "mlp", "--repeats", "1", "--epochs", "3", "--save"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("distilset: error:") == 1 and "Traceback" not in err, err
    assert "Permission denied" in err and "evaluations.json" in err
    assert "test accuracy" in out  # the result was printed before the save failed


def test_a_stored_crop_that_is_not_the_test_size_is_named(tmp_path):
    data = ds.load_dataset("digits")
    syn = ds.baseline("random", data, ipc=2)
    syn.recipe = ds.Standard(crop=(1000000, 1000000))
    with pytest.raises(ds.DistilsetError, match=r"trains on \(1000000, 1000000\) crops of its \(8, 8\) canvases"):
        ds.evaluate(syn, data, repeats=1)


def test_both_torchrun_refusals_name_the_same_data_parallel_methods(tmp_path, capsys, monkeypatch, digits):
    from distilset.methods.registry import data_parallel_methods
    from distilset.methods.runner import distill as run_distill

    names = ", ".join(data_parallel_methods())
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["baseline", "random", "--dataset", "digits", "--out", str(tmp_path / "b")]) == 2
    assert f"only distill runs, with one of {names}" in capsys.readouterr().err
    monkeypatch.setattr("distilset.methods.runner.current", lambda: type("S", (), {"world": 2, "rank": 0})())
    with pytest.raises(ds.DistilsetError, match=f"use one of {names}$"):
        run_distill("dd", digits, iterations=1)
