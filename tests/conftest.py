"""Shared fixtures: the bundled digits set, and a skip marker for Fashion-MNIST when it is not installed."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
import torch

import distilset as ds
from distilset.data import mnist_family

FASHION_PRESENT = mnist_family.idx_present(mnist_family.fashion_dir(ds.data.default_root()))
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT,
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (CI installs it via make test)",
)


@pytest.fixture(scope="session")
def digits():
    return ds.load_dataset("digits")


@pytest.fixture(scope="session")
def digits_teacher(digits, tmp_path_factory):
    """The default teacher of the digits (``distilset teacher --dataset digits``), trained once per test worker:
    its directory."""
    from distilset.teachers import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    torch.set_num_threads(THREADS)
    train_teacher(digits, out, overwrite=True)
    return out


# `make test` runs two pytest workers (pytest-xdist), one per core: each trains with one thread, and so do the
# subprocesses its tests start; a plain `pytest` uses both cores in one process.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, 2 // WORKERS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_collection_modifyitems(items):
    """The heavy tests (a method at its default budget, a run across processes) first, so that under two workers
    the quick ones fill the gaps instead of one heavy test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@contextlib.contextmanager
def sigint_after(monkeypatch, distiller: type, iteration: int):
    """Within the block, ``distiller.step`` sends this process SIGINT after ``iteration`` (the run loop then stops
    after that iteration and saves its state), with Python's handler installed even where pytest runs with SIGINT
    ignored; both are undone on exit."""
    step = distiller.step

    def interrupting(self, it):
        metrics = step(self, it)
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(distiller, "step", interrupting)
            yield
    finally:
        signal.signal(signal.SIGINT, previous)
