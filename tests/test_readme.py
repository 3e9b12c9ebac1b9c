"""The README's examples run as written: its ```bash block of commands and its ```python block, in a fresh
directory, each to success and to the files it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # the venv's `distilset`
    return e


def test_the_readme_has_runnable_examples() -> None:
    assert len(blocks("bash")) == 1 and len(blocks("python")) == 1
    assert all(line.startswith("distilset ") for line in blocks("bash")[0].splitlines() if line.strip())


@pytest.mark.heavy
def test_the_readme_commands_run(tmp_path: Path) -> None:
    for line in blocks("bash")[0].splitlines():
        if line.strip():
            done = subprocess.run(line, shell=True, cwd=tmp_path, env=env(), capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
    page = (tmp_path / "runs" / "report.html").read_text()
    assert '<h2 id="dd">' in page and '<h2 id="random">' in page  # both sets, each with its section
    assert (tmp_path / "runs" / "dd" / "evaluations.json").exists()


@pytest.mark.heavy
def test_the_readme_python_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", blocks("python")[0]], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "kip" / "synset.json").exists()
    assert "SyntheticSet(100 items of (1, 8, 8), 10 classes" in done.stdout
