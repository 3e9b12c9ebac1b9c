"""Differentiable SGD over explicit parameters: the engine shared by every unrolled method.

``sgd_unroll`` runs T steps theta_{t+1} = theta_t - lr_t * grad L(theta_t; batch_t) with ``create_graph``
so an outer loss of theta_T can be differentiated back to whatever built the batches and lrs (distilled
images, learned labels, learned lrs). ``unrolled_gradient`` does that differentiation either on the plain
graph (memory grows with T) or with segment checkpointing: only every ``segment``-th theta is kept during the
forward pass, and each segment but the last (whose graph the forward pass keeps) is recomputed with its graph
during the backward pass. With segment ~ sqrt(T) peak memory grows as sqrt(T), for one extra forward pass and
first-order gradient over the first T - segment steps; the gradient is the same up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from distilset.losses import soft_cross_entropy

Params = dict[str, torch.Tensor]
# step t -> (inputs, targets, lr): built from the learnable tensors, so the unroll can be differentiated.
StepFn = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# theta_T -> the outer loss, or an iterable of parts that sum to it (lets the checkpointed path free the
# activations of one real-data chunk before building the next).
OuterFn = Callable[[Params], torch.Tensor | Iterable[torch.Tensor]]


def net_params(net: nn.Module, requires_grad: bool = True) -> Params:
    """A detached copy of ``net``'s parameters as an explicit dict (the functional state)."""
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in net.named_parameters()}


def forward(net: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` evaluated with ``params`` instead of its own weights (buffers stay the module's)."""
    return functional_call(net, params, (x,), strict=False)


def sgd_step(
    net: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: torch.Tensor,
    loss_fn: LossFn = soft_cross_entropy,
    create_graph: bool = True,
) -> Params:
    """One differentiable SGD step on the batch (x, y)."""
    loss = loss_fn(forward(net, params, x), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    new = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    if not create_graph:
        new = {k: v.detach().requires_grad_(True) for k, v in new.items()}
    return new


def sgd_unroll(
    net: nn.Module,
    params: Params,
    step_fn: StepFn,
    start: int,
    stop: int,
    loss_fn: LossFn = soft_cross_entropy,
    create_graph: bool = True,
) -> Params:
    """Steps ``start .. stop-1`` of the unroll from ``params``; differentiable when ``create_graph``."""
    for t in range(start, stop):
        x, y, lr = step_fn(t)
        params = sgd_step(net, params, x, y, lr, loss_fn, create_graph)
    return params


def default_segment(steps: int) -> int:
    return max(1, math.ceil(math.sqrt(steps)))


def unrolled_gradient(
    net: nn.Module,
    params0: Params,
    step_fn: StepFn,
    steps: int,
    outer_loss: OuterFn,
    leaves: Sequence[torch.Tensor],
    segment: int | None = None,
    loss_fn: LossFn = soft_cross_entropy,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outer loss after ``steps`` unrolled SGD steps, and its gradient w.r.t. ``leaves``.

    ``segment=None``: the plain unrolled graph. ``segment=k``: checkpoint every k steps and recompute each
    segment but the last (whose graph the forward pass keeps) during the backward pass (sub-linear memory; the
    kept graph is alive while the outer loss is differentiated, so a large outer loss adds its chunk to the
    peak). Returns ``(loss, grads)`` with a zero tensor for a
    leaf the loss does not depend on.
    """
    leaves = list(leaves)
    if segment is None:
        params = {k: v.detach().requires_grad_(True) for k, v in params0.items()}
        final = sgd_unroll(net, params, step_fn, 0, steps, loss_fn, create_graph=True)
        loss = outer_loss(final)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss.detach(), [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads, strict=True)]

    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    # Forward pass without graph, keeping theta at the start of every segment; the last segment keeps its graph
    # (the backward pass would rebuild it first anyway), so it is never computed twice.
    bounds = list(range(0, steps, segment)) + [steps]
    saved: list[Params] = []
    params = {k: v.detach().requires_grad_(True) for k, v in params0.items()}
    last = len(bounds) - 2
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        saved.append(params)
        if i < last:
            params = _detached_unroll(net, params, step_fn, a, b, loss_fn)
        else:
            kept = sgd_unroll(net, params, step_fn, a, b, loss_fn, create_graph=True)
            params = kept
    final = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    keys = list(final)
    g_params = [torch.zeros_like(final[k]) for k in keys]
    g_leaves = [torch.zeros_like(v) for v in leaves]
    loss = torch.zeros(())
    parts = outer_loss(final)
    for part in [parts] if isinstance(parts, torch.Tensor) else parts:
        out = torch.autograd.grad(part, [final[k] for k in keys] + leaves, allow_unused=True)
        g_params = [a if g is None else a + g for a, g in zip(g_params, out[: len(keys)], strict=True)]
        g_leaves = [a if g is None else a + g for a, g in zip(g_leaves, out[len(keys) :], strict=True)]
        loss = loss + part.detach()
    # Backward pass: recompute each segment (but the kept last one) with its graph, pull the gradient through it.
    for i in reversed(range(len(saved))):
        if i == last:
            start, end = saved[i], kept
        else:
            start = {k: v.detach().requires_grad_(True) for k, v in saved[i].items()}
            end = sgd_unroll(net, start, step_fn, bounds[i], bounds[i + 1], loss_fn, create_graph=True)
        got = torch.autograd.grad(
            [end[k] for k in keys], [start[k] for k in keys] + leaves, grad_outputs=g_params, allow_unused=True
        )
        g_params = [torch.zeros_like(start[k]) if g is None else g for k, g in zip(keys, got[: len(keys)], strict=True)]
        g_leaves = [acc if g is None else acc + g for acc, g in zip(g_leaves, got[len(keys) :], strict=True)]
    return loss.detach(), g_leaves


def _detached_unroll(net: nn.Module, params: Params, step_fn: StepFn, start: int, stop: int, loss_fn: LossFn) -> Params:
    """Steps without keeping any graph (values only), for the checkpointed forward pass."""
    for t in range(start, stop):
        x, y, lr = step_fn(t)
        x, y, lr = x.detach(), y.detach(), lr.detach()
        params = sgd_step(net, params, x, y, lr, loss_fn, create_graph=False)
    return params
