"""Failures lose nothing: the output-directory policy, writes that never follow planted links, checks before
any work, checked checkpoints, and runs stopped by SIGINT/SIGTERM/SIGKILL that resume bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import distilset as ds
from distilset.cli import main
from distilset.errors import DistilsetError, Interrupted
from distilset.files import CHECKPOINT
from distilset.io import write_json
from distilset.methods.dd import DatasetDistillation


@pytest.fixture(autouse=True)
def _interruptible():
    """Tests here send themselves SIGINT: give it Python's handler even when pytest runs as a background job of a
    non-interactive shell, which starts with SIGINT ignored (and distilset leaves an ignored SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


FAST = {"net": "mlp", "steps": 2, "epochs": 2, "real_batch": 256, "net_init": "random"}
FAST_FLAGS = ["--net", "mlp", "--steps", "2", "--epochs", "2", "--real-batch", "256", "--init", "random"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("distilset: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- 1. finished work is never replaced unasked --------------------------------------------------------
def test_a_finished_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "3", *FAST_FLAGS, "--out", out)[0] == 0
    before = _snapshot(out)
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "2", *FAST_FLAGS, "--out", out)
    assert code == 2
    _one_error_line(err, "already holds a dd set", "--resume", "--overwrite")
    code, err = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", out)
    assert code == 2
    _one_error_line(err, "already holds a dd set", "--overwrite")
    assert "--resume" not in err  # baseline has no --resume
    assert _snapshot(out) == before  # nothing touched


def test_overwrite_replaces_the_whole_run_and_keeps_foreign_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "2", *FAST_FLAGS, "--out", out)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _ = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", out, "--overwrite")
    assert code == 0
    # no stale history.json or checkpoint/ beside the new set; the user's file stays
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "notes.txt", "synset.json", "synset.safetensors"]
    assert ds.SyntheticSet.load(out).method == "random"


def test_resume_needs_a_checkpoint_and_excludes_overwrite(tmp_path, capsys, digits):
    out = tmp_path / "base"
    ds.baseline("random", digits, ipc=1).save(out)
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--out", out, "--resume")
    assert code == 2
    _one_error_line(err, "holds a random set but no checkpoint", "nothing to resume")
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--out", out, "--resume", "--overwrite")
    assert code == 2
    _one_error_line(err, "--resume", "--overwrite", "give one of them")


def test_an_unfinished_run_is_named(tmp_path, digits):
    ds.distill("dd", digits, iterations=2, out=tmp_path, checkpoint_every=1, **FAST)
    (tmp_path / "synset.json").unlink()
    with pytest.raises(
        DistilsetError, match=r"holds an unfinished run \(checkpoint/\); give resume to continue it or overwrite"
    ):
        ds.distill("dd", digits, iterations=2, out=tmp_path, **FAST)


def test_experts_are_never_written_into_a_run_directory(tmp_path, capsys, digits):
    ds.baseline("random", digits, ipc=1).save(tmp_path)
    code, err = _cli(capsys, "experts", "--dataset", "digits", "--experts", "1", "--epochs", "1", "--out", tmp_path)
    assert code == 2
    _one_error_line(err, "already holds a random set", "choose another directory")
    assert not (tmp_path / "manifest.json").exists()


# ---- 2. writes never follow planted links ----------------------------------------------------------------
OLD_TEMP_NAMES = (".history.json.tmp", ".synset.json.tmp", ".synset.safetensors.tmp", "grid.png.tmp.png",
                  "checkpoint/.state.pt.tmp", "checkpoint/state.pt.tmp", "experts/.manifest.json.tmp")  # fmt: skip


def test_planted_links_at_temp_and_final_paths_are_never_followed(tmp_path, digits):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "run"
    ds.distill("dd", digits, iterations=1, out=out, checkpoint_every=1, **FAST)
    (out / "experts").mkdir()
    for name in OLD_TEMP_NAMES:  # every fixed temporary name earlier versions used
        (out / name).symlink_to(outside)
    ds.distill("dd", digits, iterations=2, out=out, resume=True, checkpoint_every=1, **FAST)
    assert outside.read_text() == "precious"
    # a link planted at a final name is replaced by the file, never written through
    for name in ("history.json", "synset.json", "grid.png", "checkpoint/state.pt"):
        state = (out / name).read_bytes()
        (out / name).unlink()
        (out / name).symlink_to(outside if name != "checkpoint/state.pt" else out / "state-copy.pt")
        if name == "checkpoint/state.pt":
            (out / "state-copy.pt").write_bytes(state)
    ds.distill("dd", digits, iterations=3, out=out, resume=True, checkpoint_every=1, **FAST)
    assert outside.read_text() == "precious"
    assert not any((out / name).is_symlink() for name in ("history.json", "synset.json", "checkpoint/state.pt"))
    write_json(out / "checkpoint" / "state.pt", {"x": 1})  # the writer itself, on a link
    assert outside.read_text() == "precious" and not (out / "checkpoint" / "state.pt").is_symlink()


def test_overwrite_deletes_only_what_distilset_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "2", *FAST_FLAGS, "--out", out)[0] == 0
    (out / "checkpoint" / "model_epoch90.pt").write_bytes(b"the user's own checkpoint")
    code, _ = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", out, "--overwrite")
    assert code == 0 and ds.SyntheticSet.load(out).method == "random"
    # the run's state.pt and history.json are gone, the user's file in checkpoint/ (and so the folder) stays
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["model_epoch90.pt"]
    assert not (out / "history.json").exists()
    # a file under a run's name that distilset did not write: refused before anything is deleted
    (out / "history.json").write_text('{"loss": [0.9, 0.5], "note": "my training log"}')
    before = _snapshot(out)
    code, err = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "2", "--out", out, "--overwrite")
    assert code == 2
    _one_error_line(err, "history.json", "distilset did not write", "nothing was deleted")
    assert _snapshot(out) == before
    (out / "history.json").unlink()
    (out / "synset.json").write_text('{"format": "someone.else"}')  # a set file of another program
    code, err = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "2", "--out", out, "--overwrite")
    assert code == 2
    _one_error_line(err, "synset.json", "grid.png")  # its picture is not claimed either


@pytest.mark.parametrize(
    "argv",
    [
        ["distill", "dd", "--dataset", "digits", *FAST_FLAGS],
        ["baseline", "random", "--dataset", "digits"],
        ["teacher", "--dataset", "digits"],
        ["experts", "--dataset", "digits"],
        ["teach", "omni", "--dataset", "digits"],
    ],
)
def test_an_empty_out_is_refused_not_taken_for_the_current_directory(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, *argv, "--out", "")
    assert code == 2
    _one_error_line(err, "out is empty")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_removes_a_planted_link_not_its_target(tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint").symlink_to(target, target_is_directory=True)
    code, _ = _cli(capsys, "baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", out, "--overwrite")
    assert code == 0 and (target / "keep.txt").read_text() == "precious"
    assert not (out / "checkpoint").exists()


# ---- 3. a bad --out fails before any work ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["dd", "mtt"])
def test_an_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch, method):
    calls = []
    monkeypatch.setattr("distilset.methods.mtt.train_experts", lambda *a, **k: calls.append("experts"))
    monkeypatch.setattr(DatasetDistillation, "step", lambda self, it: calls.append("step"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, needle in ((blocker, "is a file"), (blocker / "sub", "cannot write"), ("/proc/distilset", "cannot write")):
        code, err = _cli(capsys, "distill", method, "--dataset", "digits", "--out", out)
        assert code == 2
        _one_error_line(err, f"--out {out}", needle)
    assert calls == []


# ---- 6. counts are counts ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--seed", "-1"], "--seed must be an integer from 0 to 2**62"),
        (["--seed", str(2**70)], "--seed must be an integer from 0 to 2**62"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--eval-every", "-1"], "--eval-every must be >= 0"),
        (["--iterations", "-3"], "--iterations must be >= 1"),
    ],
)
def test_bad_counts_are_refused(tmp_path, capsys, flags, needle):
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", *flags, "--out", tmp_path / "x")
    assert code == 2
    _one_error_line(err, needle)
    assert not (tmp_path / "x").exists()


# ---- checkpoints are checked like sets --------------------------------------------------------------------
def _corrupt(state: dict, how: str) -> dict:
    if how == "negative iteration":
        state["iteration"] = -5
    elif how == "float iteration":
        state["iteration"] = 1e12
    elif how == "history not a list":
        state["history"] = json.dumps({"a": 1})
    elif how == "history too short":
        state["history"] = json.dumps(json.loads(state["history"])[:1])
    elif how == "NaN in the state":
        state["distiller"]["images"] = torch.full_like(state["distiller"]["images"], float("nan"))
    elif how == "wrong shape":
        state["distiller"]["images"] = torch.zeros(3, 3)
    elif how == "not a checkpoint":
        state = {"weights": torch.zeros(2)}
    return state


@pytest.mark.parametrize(
    "how, needle",
    [
        ("negative iteration", "iteration -5 is not a count"),
        ("float iteration", "is not a count"),
        ("history not a list", "one row per iteration"),
        ("history too short", "one row per iteration"),
        ("NaN in the state", "images holds NaN"),
        ("wrong shape", "does not fit this run"),
        ("not a checkpoint", "not a distilset checkpoint"),
    ],
)
def test_corrupt_checkpoints_are_refused(tmp_path, capsys, digits, how, needle):
    ds.distill("dd", digits, iterations=2, out=tmp_path, checkpoint_every=1, **FAST)
    path = tmp_path / CHECKPOINT
    state = torch.load(path, weights_only=True)
    assert "images" in state["distiller"]  # the corruptions below need it
    torch.save(_corrupt(state, how), path)
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "4", *FAST_FLAGS,
                     "--out", tmp_path, "--resume")  # fmt: skip
    assert code == 2
    _one_error_line(err, needle)


def test_a_fixed_init_of_another_shape_in_the_checkpoint_is_refused_before_a_step(tmp_path, capsys, digits):
    fixed = {**FAST, "net_init": "fixed"}
    ds.distill("dd", digits, iterations=2, out=tmp_path, checkpoint_every=1, **fixed)
    path = tmp_path / CHECKPOINT
    state = torch.load(path, weights_only=True)
    key = next(iter(state["distiller"]["fixed_init"]))
    state["distiller"]["fixed_init"][key] = torch.zeros(7, 3)
    torch.save(state, path)
    flags = [f if f != "random" else "fixed" for f in FAST_FLAGS]
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "4", *flags, "--out", tmp_path,
                     "--resume")  # fmt: skip
    assert code == 2
    _one_error_line(err, f"fixed_init.{key} is (7, 3)", "delete")


@pytest.mark.parametrize("content", [b"garbage" * 10, "pickle with code"])
def test_an_unreadable_checkpoint_never_advises_turning_weights_only_off(tmp_path, capsys, digits, content):
    ds.distill("dd", digits, iterations=2, out=tmp_path, checkpoint_every=1, **FAST)
    path = tmp_path / CHECKPOINT
    if content == "pickle with code":
        torch.save({"distiller": Interrupted("not a plain value")}, path)  # an object weights_only refuses
    else:
        path.write_bytes(content)
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "4", *FAST_FLAGS,
                     "--out", tmp_path, "--resume")  # fmt: skip
    assert code == 2
    _one_error_line(err, "is unreadable", "delete it to start over")
    assert "weights_only" not in err and "can still be loaded" not in err and "trust" not in err


# ---- 7. interrupts save the state; kills lose at most the iterations since the last checkpoint ----------
KILL_SEED = int(os.environ.get("DISTILSET_KILL_SEED", "0"))
"""Seed of the iterations at which the tests signal and kill: each test draws its point from a generator seeded
by this and its own name, so a failure reruns at the same point (set DISTILSET_KILL_SEED=N to try others)."""


def kill_point(low: int, high: int, test: str) -> int:
    g = torch.Generator().manual_seed(KILL_SEED + zlib.crc32(test.encode()))
    return int(torch.randint(low, high, (1,), generator=g))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_iteration_and_resume_is_exact(tmp_path, digits, monkeypatch, sig):
    full = ds.distill("dd", digits, iterations=6, out=tmp_path / "full", checkpoint_every=100, **FAST)
    step = DatasetDistillation.step
    at = kill_point(0, 5, f"signal {sig.name}")  # any iteration but the last

    def step_then_signal(self, it):
        metrics = step(self, it)
        if it == at:
            os.kill(os.getpid(), sig)  # delivered now: the handler only asks the loop to stop
        return metrics

    monkeypatch.setattr(DatasetDistillation, "step", step_then_signal)
    with pytest.raises(
        Interrupted, match=rf"stopped by {sig.name} after iteration {at + 1} of 6.*with resume to continue"
    ):
        ds.distill("dd", digits, iterations=6, out=tmp_path / "cut", checkpoint_every=100, **FAST)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["iteration"] == at + 1
    monkeypatch.setattr(DatasetDistillation, "step", step)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed = ds.distill("dd", digits, iterations=6, out=tmp_path / "cut", resume=True, **FAST)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lrs, resumed.lrs)


def test_the_cli_exits_130_after_an_interrupt(tmp_path, capsys, monkeypatch):
    step = DatasetDistillation.step

    def step_then_signal(self, it):
        metrics = step(self, it)
        if it == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(DatasetDistillation, "step", step_then_signal)
    code, err = _cli(capsys, "distill", "dd", "--dataset", "digits", "--iterations", "5", *FAST_FLAGS,
                     "--out", tmp_path)  # fmt: skip
    assert code == 130 and "stopped by SIGINT after iteration 2 of 5" in err and "--resume" in err


def _cli_process(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "distilset.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.heavy
def test_sigkill_at_a_random_iteration_then_resume_is_bit_identical(tmp_path):
    args = ["distill", "dd", "--dataset", "digits", "--iterations", "30", *FAST_FLAGS, "--checkpoint-every", "1"]
    reference = _cli_process(*args, "--out", tmp_path / "full")
    victim = _cli_process(*args, "--out", tmp_path / "cut")
    kill_after = kill_point(2, 20, "sigkill")
    deadline = time.monotonic() + 120
    history = tmp_path / "cut" / "history.json"
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            if len(json.loads(history.read_text())) >= kill_after:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    victim.kill()  # SIGKILL: no handler runs
    victim.wait()
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    resumed = _cli_process(*args, "--out", tmp_path / "cut", "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    a, b = ds.SyntheticSet.load(tmp_path / "full"), ds.SyntheticSet.load(tmp_path / "cut")
    assert torch.equal(a.images, b.images) and torch.equal(a.lrs, b.lrs)
    full_losses = [r["loss"] for r in json.loads((tmp_path / "full" / "history.json").read_text())]
    assert [r["loss"] for r in json.loads(history.read_text())] == full_losses


@pytest.mark.heavy
def test_a_second_run_on_a_busy_directory_fails_at_once_naming_the_first(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "dd", "--dataset", "digits", "--iterations", "5000", *FAST_FLAGS, "--out", out]  # runs long
    first = _cli_process(*args)
    try:
        deadline = time.monotonic() + 60
        while not (out / "history.json").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        t0 = time.monotonic()
        baseline = ["baseline", "random", "--dataset", "digits", "--out", out]
        for second in (args, [*args[:-2], "--out", out, "--overwrite"], baseline):
            code, err = _cli(capsys, *second)
            assert code == 2
            _one_error_line(err, "in use by another distilset run", f"PID {first.pid}")
        assert time.monotonic() - t0 < 10  # at once, not after training
    finally:
        first.kill()
        first.wait()
    # a killed run leaves no lock behind: the directory can be resumed at once
    code, err = _cli(capsys, *args[:-2], "--iterations", "2", "--out", out, "--overwrite")
    assert code == 0, err


# ---- 8. a set names its dataset as a hint, never as a path to open --------------------------------------
def test_a_set_cannot_make_evaluate_open_a_path(tmp_path, capsys, digits):
    syn = ds.baseline("random", digits, ipc=1)
    syn.dataset = "npz:/etc/passwd"
    syn.save(tmp_path)
    code, err = _cli(capsys, "evaluate", tmp_path)
    assert code == 2
    _one_error_line(err, "pass --dataset", "npz:/etc/passwd")


def test_a_fixed_init_replay_on_a_resized_net_is_one_line(tmp_path, capsys, digits):
    ds.distill("dd", digits, iterations=1, out=tmp_path, **{**FAST, "net_init": "fixed"})
    code, err = _cli(capsys, "evaluate", tmp_path, "--net-arg", "width=64", "--repeats", "1")
    assert code == 2
    _one_error_line(err, "stored initial weights do not fit this net", "--protocol standard")
