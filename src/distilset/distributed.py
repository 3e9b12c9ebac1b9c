"""Data-parallel distillation on torch.distributed: which part of the work is this process's.

Launched with ``torchrun --nproc_per_node N -m distilset.cli distill dm ...`` (gloo on CPU, nccl on CUDA), every
process (rank) holds the same synthetic set, draws the same random numbers (the same networks, the same real
batch indices, the same augmentation seeds) and computes its share of the loss only. The gradients of the learned
tensors are summed over the ranks (all-reduce), so every rank takes the same optimiser step as a single process
would, up to the order of floating-point sums. What each method shards:

- DM, DC, DSA: the classes (class c is rank ``c % world``'s), since their losses are sums over classes;
- SRe2L: the classes too (each rank recovers the images of its classes); its batch-norm statistics span a batch
  of many classes, so each rank's per-batch sums are added over the ranks (``sum_with_grad``) before the loss;
- KIP, FRePo: the real target batch (rank r takes the r-th contiguous share of the rows, ``Shards.share``);
  the support kernel, its solve and FRePo's online networks are replicated, computed alike on every rank;
- MTT: the expert trajectories matched per iteration (``--trajectories``, which must be at least the number of
  ranks); trajectory j is rank ``j % world``'s, the gradients are averaged over all of them.

Rank 0 alone writes the output directory (checkpoints, history, the set); every rank reads a checkpoint on
``--resume``, which therefore works with any number of ranks. Methods registered with ``data_parallel=True``
support it; the others (DD, labels, LS, RDED) refuse to start with more than one rank.

Without a process group (a plain ``distilset`` or API call) ``current()`` is rank 0 of 1 and nothing here
touches torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from distilset.errors import DistilsetError

T = TypeVar("T")


@dataclass(frozen=True)
class Shards:
    """This process's rank among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        """Whether this rank writes files (rank 0)."""
        return self.rank == 0

    def mine(self, c: int) -> bool:
        """Whether class ``c``'s loss is computed here."""
        return c % self.world == self.rank

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (a target batch): rows ``rank * n // world`` up to the next
        rank's first row."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum_grads(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor's ``.grad`` over the ranks (a rank that computed nothing for one contributes zeros)."""
        for t in tensors:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            self.sum_(t.grad)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (nothing to do with one rank)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, differentiable: the gradient flows back to this rank's own share
        unchanged. Right when every rank feeds the sum into the same function (e.g. SRe2L's batch-norm statistics
        loss): each rank's share then gets exactly the gradient that function gives the sum."""
        if self.world == 1:
            return tensor
        return _SumOverRanks.apply(tensor)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def on_writer(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its result (or its user error) on every rank."""
        if self.world == 1:
            return fn()
        box: list = [None]
        if self.writer:
            try:
                box[0] = ("ok", fn())
            except DistilsetError as e:
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward (see ``Shards.sum_with_grad``)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad


def current() -> Shards:
    if dist.is_available() and dist.is_initialized():
        return Shards(dist.get_rank(), dist.get_world_size())
    return Shards()


def world_size() -> int:
    """The process count torchrun sets in ``WORLD_SIZE`` (1 when unset), refused in one line when not a count."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise DistilsetError(f"WORLD_SIZE={raw!r} is not a process count; launch with torchrun, or unset WORLD_SIZE")
    return int(raw)


def init_from_env(device: str) -> tuple[Shards, str]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1); return the shards and
    this rank's device (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    world = world_size()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k, "").strip()]
        if missing:
            raise DistilsetError(
                f"WORLD_SIZE={world} asks for {world} processes, but {', '.join(missing)} is not set: launch with "
                "`torchrun --nproc-per-node N -m distilset.cli ...`, or unset WORLD_SIZE to run in one process"
            )
        launcher = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("DISTILSET_LAUNCHER")
        if not launcher:  # torchrun sets the first; without a launcher the rendezvous would wait forever
            raise DistilsetError(
                f"WORLD_SIZE={world} asks for {world} processes, but this one was not started by torchrun (no "
                "TORCHELASTIC_RUN_ID), so nothing starts the others: launch with `torchrun --nproc-per-node N -m "
                "distilset.cli ...`, or unset WORLD_SIZE to run in one process (another launcher that starts every "
                "rank, such as srun: set DISTILSET_LAUNCHER=its name)"
            )
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current(), device
    if not dist.is_available():
        raise DistilsetError("this PyTorch build has no torch.distributed; run without torchrun")
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")  # CPU scalars travel by gloo
    return current(), device


__all__ = ["Shards", "current", "init_from_env", "world_size"]
