"""Teacher-student systems, one file each, each registering itself: ``teach(name, data, ...)``.

They distil knowledge from trained models into labels (pseudo-labels, soft labels, consensus scores) and train
students on them: omni-supervised data distillation (``omni``), learning from noisy labels with distillation
(``noisy``) and heterogeneous federated learning by model distillation (``fedmd``).
"""

from __future__ import annotations

from distilset.teach import fedmd, noisy, omni  # noqa: F401  (each registers itself)
from distilset.teach.base import SYSTEMS, Model, Taught, TeachConfig, load_model, register_system, teach

__all__ = ["SYSTEMS", "Model", "Taught", "TeachConfig", "load_model", "register_system", "teach"]
