"""The output-directory policy: one directory holds one run, and finished work is never replaced unasked.

``prepare_out(out, resume=..., overwrite=...)`` runs before any work (before experts are trained or a
network is fitted) and decides what may happen to ``out``:

- a missing or empty directory, or one holding only files distilset did not write: the run starts there;
- a directory holding a run (a saved set, ``history.json`` or ``checkpoint/``) is refused, naming what it
  holds, unless ``resume`` (continue its checkpoint; the settings are compared when the checkpoint is read)
  or ``overwrite`` (the run's files are deleted first; files distilset did not write, trained experts in
  ``OUT/experts`` and a teacher in ``OUT/teacher`` are kept). A file under one of a run's names that distilset
  did not write (a user's own ``history.json``; a ``synset.json`` of another format) makes ``overwrite`` refuse
  before anything is deleted, as the new run would replace it; in ``checkpoint/`` only distilset's checkpoint
  files are deleted, and the folder only when nothing else is left in it;
- ``resume`` on a directory holding a set but no checkpoint is refused: there is nothing to continue.

One process at a time: ``prepare_out`` takes an exclusive lock on the directory (``flock`` on the directory
itself, so nothing is added to it) before it looks inside, and a second run on the same directory fails at once,
naming the first one's PID. The lock is released when the entry point that took it returns (``releases_locks``)
or its process ends, however it ends (the kernel drops a dead process's locks: a run killed with SIGKILL leaves
none behind).

It then creates the directory and proves it writable with a real temporary file (``mkstemp``, removed at
once), so a read-only directory, a path under /proc or a file in the way fails in one line, not after
training. The files themselves are written by ``distilset.io`` (a fresh temporary name and a rename).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from distilset.errors import ConfigError
from distilset.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILES,
    EVALUATIONS,
    HISTORY,
    RUN_FILES,
    SCORES,
    SET_META,
    TEACH_FILES,
    TEACH_MODELS,
    TEACH_REPORT,
    TEACHER_INFO,
)


def _teach_run(out: Path) -> bool:
    try:
        report = json.loads((out / TEACH_REPORT).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "system" in report


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text()) if path.stat().st_size < 1 << 28 else None
    except (OSError, ValueError):
        return None


def _safetensors_format(path: Path) -> str | None:
    """The ``format`` entry of a safetensors file's metadata (distilset's files name theirs), or None."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 1 << 26 else {}
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta.get("format") if isinstance(meta, dict) else None


def _records(value: object, key: str) -> bool:
    return isinstance(value, list) and all(isinstance(e, dict) and key in e for e in value)


def _written_here(out: Path, name: str) -> bool:
    """Whether ``out / name`` (one of ``RUN_FILES``, not a symlink) is a file distilset wrote: its JSON or
    safetensors files say so by their format or shape; pictures and word lists count when they sit beside a
    set or teacher distilset wrote."""
    path = out / name
    if name in (SET_META, TEACHER_INFO):
        value = _json(path)
        return isinstance(value, dict) and value.get("format") in ("distilset.synset", "distilset.teacher")
    if name == HISTORY:  # one entry per logged iteration
        return _records(_json(path), "iteration")
    if name == EVALUATIONS:
        return _records(_json(path), "protocol")
    if name == SCORES:
        return _records(_json(path), "lrs")
    if name.endswith(".safetensors"):
        return _safetensors_format(path) in ("distilset.synset", "distilset.teacher")
    return any(_written_here(out, owner) for owner in (SET_META, TEACHER_INFO) if (out / owner).is_file())


def _run_files(out: Path) -> list[Path]:
    """The files and folders of a run in ``out`` that ``overwrite`` deletes (``checkpoint/``: its own files)."""
    files = [out / name for name in RUN_FILES if name != CHECKPOINT_DIR]
    files += [out / CHECKPOINT_DIR / name for name in CHECKPOINT_FILES]
    if _teach_run(out):
        files += [out / name for name in TEACH_FILES] + sorted((out / TEACH_MODELS).glob("*.safetensors"))
    return files


def _foreign(out: Path) -> list[str]:
    """Files under a run's names in ``out`` that distilset did not write (``overwrite`` would replace them)."""
    names = [n for n in RUN_FILES if n != "checkpoint" and (out / n).exists() and not (out / n).is_symlink()]
    found = [n for n in names if not (out / n).is_file() or not _written_here(out, n)]
    found += [f"checkpoint/{n}" for n in CHECKPOINT_FILES if (out / "checkpoint" / n).is_dir()]
    if (out / "checkpoint").exists() and not (out / "checkpoint").is_dir():
        found.append("checkpoint")
    return found


def describe_run(out: Path) -> str | None:
    """What run ``out`` holds, in words, or None when it holds none."""
    present = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if _teach_run(out):
        return "a teach run (report.json, models/)"
    if not present:
        return None
    if "teacher.json" in present and "synset.json" not in present:
        return "a teacher"
    method = None
    try:
        meta = json.loads((out / "synset.json").read_text())
        method = meta.get("method") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        pass
    what = f"a {method} set" if isinstance(method, str) and method else "a set"
    if (out / "checkpoint").exists():
        return f"{what} and its checkpoint" if (out / "synset.json").exists() else "an unfinished run (checkpoint/)"
    return what if (out / "synset.json").exists() else f"files of an earlier run ({', '.join(present)})"


_LOCKS: dict[Path, int] = {}
"""Directories this process holds locked, and the descriptor holding each lock."""
F = TypeVar("F", bound=Callable[..., Any])


def _holder(fd: int) -> str:
    """The PID holding a lock on the file of ``fd``, from /proc/locks (Linux), or words when unknown."""
    st = os.fstat(fd)
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK":
                dev_inode = fields[5].split(":")
                if len(dev_inode) == 3 and int(dev_inode[2]) == st.st_ino:
                    return f"PID {fields[4]}"
    except (OSError, ValueError):
        pass
    return "another process"


def _lock(out: Path) -> None:
    key = out.resolve()
    if key in _LOCKS:  # this process holds it already (a nested step of the same run)
        return
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _holder(fd)
        os.close(fd)
        raise ConfigError(
            f"`out` {out} is in use by another distilset run ({who}); wait for it to finish or choose another directory"
        ) from None
    _LOCKS[key] = fd


def releases_locks(fn: F) -> F:
    """Decorate an entry point that calls ``prepare_out``: the directories it locked are unlocked when it returns
    or raises (those locked before the call, by an enclosing run, stay locked)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_LOCKS)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_LOCKS) - before:
                os.close(_LOCKS.pop(key))  # closing the descriptor drops its lock

    return wrapper  # type: ignore[return-value]


def prepare_out(
    out: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    offers: tuple[str, ...] = ("resume", "overwrite"),
) -> Path:
    """Apply the policy of the module docstring to ``out``; return it as a Path, created and writable.

    ``offers``: the options the caller has (named in the message that refuses a directory holding a run)."""
    if not os.fspath(out):  # Path("") is the current directory: never write there by accident
        raise ConfigError("`out` is empty; give the output directory's name (use . for the current directory)")
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("`resume` continues the run in `out` and `overwrite` deletes it; give one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"`out` {out} is a file, not a directory; choose another output directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to `out` {out} ({e.strerror or e}); choose a writable directory") from e
    _lock(out)  # before looking inside: a second run on this directory stops here
    held = describe_run(out)
    if held and resume and not (out / "checkpoint").exists():
        raise ConfigError(
            f"`out` {out} holds {held} but no checkpoint, so there is nothing to resume; "
            "choose a new output directory, or give `overwrite` to replace it"
        )
    if held and not resume and not overwrite:
        if _teach_run(out):  # nothing of a teach run can be resumed
            offers = tuple(o for o in offers if o != "resume")
        ways = {"resume": "`resume` to continue it", "overwrite": "`overwrite` to replace it"}
        give = " or ".join(ways[o] for o in offers if o in ways)
        give = f"give {give}, or " if give else ""
        raise ConfigError(f"`out` {out} already holds {held}; {give}choose another directory")
    if held and overwrite and (foreign := _foreign(out)):
        raise ConfigError(
            f"`out` {out} holds {', '.join(foreign)}, which distilset did not write, under a name a run writes; "
            "nothing was deleted: move it away or choose another output directory"
        )
    try:
        if held and overwrite:
            for path in _run_files(out):
                path.unlink(missing_ok=True)  # a file, or a symlink: removed, never followed
            checkpoint = out / "checkpoint"
            if checkpoint.is_symlink():
                checkpoint.unlink()
            elif checkpoint.is_dir() and not any(checkpoint.iterdir()):
                checkpoint.rmdir()
        fd, probe = tempfile.mkstemp(dir=out, prefix=".distilset-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to `out` {out} ({e.strerror or e}); choose a writable directory") from e
    return out
