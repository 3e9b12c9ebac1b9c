"""Losses shared by training, evaluation and the methods.

- ``soft_cross_entropy``: cross-entropy for hard (N,) or soft (N, K) targets, mean_i sum_y t_iy * -log p_iy
  (for soft labels this is the soft-label paper's inner loss).
- ``centred_mse``: squared error to centred targets, one-hot - 1/K for hard labels (KIP / FRePo), as
  0.5 * mean over items of the summed squared error.
- ``kd_kl``: knowledge distillation's loss (Hinton et al. 2015) as SRe2L and RDED train their students:
  KL(softmax(t / T) || softmax(s / T)) averaged over the batch, without the T^2 factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard (N,) or soft (N, K) targets."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def centred_targets(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels as one-hot - 1/K; soft label vectors are used as they are."""
    if targets.ndim == 2:
        return targets
    return F.one_hot(targets, num_classes).to(torch.get_default_dtype()) - 1.0 / num_classes


def centred_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0.5 * mean_i ||outputs_i - t_i||^2 with t the centred targets."""
    t = centred_targets(targets, outputs.shape[1]).to(outputs.dtype)
    return 0.5 * (outputs - t).pow(2).sum(1).mean()


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_probs || softmax(student / T)) summed over classes, batch mean; ``teacher_probs`` are already
    softened: softmax(teacher_logits / T), computed per batch or stored (``distilset.relabel``)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), teacher_probs, reduction="batchmean")


LOSSES = {"ce": soft_cross_entropy, "mse": centred_mse}
