"""Shared fixtures: the bundled digits set, and a skip marker for Fashion-MNIST when it is not installed."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
