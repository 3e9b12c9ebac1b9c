"""Deterministic stratified train/test splits for sources that ship no test split."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, test_per_class: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so each class gives ``test_per_class`` examples (a count, or a fraction if < 1) to test.

    The same labels and seed always give the same split, on every machine (numpy's PCG64).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_per_class * len(idx))) if test_per_class < 1 else int(test_per_class)
        test.append(np.sort(idx[:k]))
        train.append(np.sort(idx[k:]))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
