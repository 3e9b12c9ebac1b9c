"""Independent jobs, here or on a Ray cluster: ``run_jobs(fn, jobs, ray=...)``; stateful members that take
calls side by side (Ray actors): ``Crowd(members, ray=...)``.

Expert trajectories (``train_experts``) and cross-architecture evaluations (``evaluate_nets``) are lists of
independent jobs, each with its own seed. Without ``ray`` they run one after another in this process and Ray is
never imported. With ``ray`` (``True``: start a local cluster or join the one ``ray start`` made on this
machine; ``"auto"`` or an address ``"HOST:PORT"`` / ``"ray://HOST:10001"``: that cluster) each job is a Ray task
(one CPU each); ``fn`` must be a module-level function, its arguments picklable. A task whose worker dies (a
killed process, a lost node) is run again by Ray, up to ``RETRIES`` times; jobs must therefore be idempotent:
those here write their own file, named by the job's index, through the atomic writer, so a retried job replaces
nothing finished and leaves no duplicate (MTT's reference code picks file names with a "while it exists" loop,
which races between workers). Results come back in the order of ``jobs``; for the same seeds they are those of
the sequential run (up to the thread count's effect on floating-point sums).

Install with ``pip install "distilset[ray]"``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from distilset.errors import DistilsetError

RETRIES = 3
"""How often Ray runs a task again after its worker died."""


def run_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    ray: bool | str | None = None,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in this process or as Ray tasks (see the module docstring);
    ``on_done(i, result)`` is called as each job finishes (in this process), e.g. to record it."""
    results: list[Any] = [None] * len(jobs)

    def done(i: int, result: Any) -> None:
        results[i] = result
        if on_done is not None:
            on_done(i, result)

    if not ray:
        for i, job in enumerate(jobs):
            done(i, fn(*job))
        return results
    ray_mod = connect(ray)
    task = ray_mod.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(fn)
    stored: dict[int, Any] = {}  # each large argument (a dataset, a set) goes to the object store once

    def ref(arg: Any) -> Any:
        if arg is None or isinstance(arg, (str, int, float, bool, os.PathLike)):
            return arg
        if id(arg) not in stored:
            stored[id(arg)] = ray_mod.put(arg)
        return stored[id(arg)]

    pending = {task.remote(*map(ref, job)): i for i, job in enumerate(jobs)}
    try:
        while pending:
            ready, _ = ray_mod.wait(list(pending), num_returns=1)
            for r in ready:
                done(pending.pop(r), ray_mod.get(r))
    except BaseException:
        for r in pending:  # a failed job (or Ctrl-C) stops the others
            ray_mod.cancel(r)
        raise
    return results


def connect(ray: bool | str) -> Any:
    """The ``ray`` module, connected to the cluster ``ray`` names (``True``: a local one)."""
    try:
        import ray as ray_mod
    except ImportError as e:
        raise DistilsetError('`ray` needs Ray: pip install "distilset[ray]" (or run without `ray`)') from e
    if not ray_mod.is_initialized():
        address = None if ray is True else str(ray)
        _probe(address)
        try:
            threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            ray_mod.init(
                address=address, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": threads}
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DistilsetError(
                f"cannot reach the Ray cluster at {address or 'this machine'} ({e}); start one "
                "with `ray start --head` or give its address to `ray`"
            ) from e
    return ray_mod


def _probe(address: str | None) -> None:
    """Refuse at once a cluster address nothing answers at (Ray itself retries for minutes, logging warnings)."""
    if address in (None, "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DistilsetError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_S):
            pass
    except OSError as e:
        raise DistilsetError(
            f"nothing answers at the Ray address {address} ({e.strerror or e}); start the cluster "
            "there with `ray start --head`, or check the address"
        ) from e


PROBE_S = 5.0
"""How long a cluster address may take to accept a connection before it is refused."""


class Crowd:
    """Stateful members (e.g. FedMD's parties) whose method calls run side by side on Ray actors, or one after
    another in this process without ``ray``.

    ``map(method, args)`` calls ``getattr(member_i, method)(*args[i])`` on every member and returns the results in
    the members' order; ``each(method, *args)`` gives every member the same arguments (sent to the object store
    once). ``members()`` returns the members as they are now (from the actors: copies). The members are dealt to
    ``actors`` actors (default: one per CPU of the cluster, at most one per member), member i to actor i mod
    ``actors``, each actor taking its members' calls one after another: a crowd larger than the cluster costs no
    more processes than it has cores, and one call of ``map`` is one round trip per actor. The actors take Ray's
    actor default (a CPU to be placed, none while they live), spread over the nodes, so crowds alive side by side
    are all placed. An actor's state cannot be rebuilt on a new worker, so a member whose worker dies fails the
    call instead of being retried."""

    def __init__(self, members: Sequence[Any], ray: bool | str | None = None, actors: int | None = None) -> None:
        self._members = list(members)
        self._ray = connect(ray) if ray else None
        if self._ray is not None:
            cpus = int(self._ray.cluster_resources().get("CPU", 1))
            n = max(1, min(len(self._members), actors or cpus))
            self._groups = [list(range(a, len(self._members), n)) for a in range(n)]
            actor = self._ray.remote(scheduling_strategy="SPREAD")(_Members)
            self._actors = [actor.remote([self._members[i] for i in group]) for group in self._groups]
            self._members = []  # they live in the actors now

    def map(self, method: str, args: Sequence[tuple]) -> list[Any]:
        if len(args) != len(self):
            raise ValueError(f"{len(args)} argument tuples for {len(self)} members")
        if self._ray is None:
            return [getattr(m, method)(*a) for m, a in zip(self._members, args, strict=True)]
        stored: dict[int, Any] = {}

        def ref(arg: Any) -> Any:
            if arg is None or isinstance(arg, (str, int, float, bool)):
                return arg
            if id(arg) not in stored:
                stored[id(arg)] = self._ray.put(arg)
            return stored[id(arg)]

        calls = [
            actor.call.remote(method, [tuple(map(ref, args[i])) for i in group])
            for actor, group in zip(self._actors, self._groups, strict=True)
        ]
        results: list[Any] = [None] * len(self)
        for group, done in zip(self._groups, self._ray.get(calls), strict=True):
            for i, result in zip(group, done, strict=True):
                results[i] = result
        return results

    def each(self, method: str, *args: Any) -> list[Any]:
        return self.map(method, [args] * len(self))

    def get(self, name: str) -> list[Any]:
        """Every member's attribute ``name``."""
        if self._ray is None:
            return [getattr(m, name) for m in self._members]
        out: list[Any] = [None] * len(self)
        for group, values in zip(self._groups, self._ray.get([a.get.remote(name) for a in self._actors]), strict=True):
            for i, value in zip(group, values, strict=True):
                out[i] = value
        return out

    def members(self) -> list[Any]:
        if self._ray is None:
            return list(self._members)
        out: list[Any] = [None] * len(self)
        for group, held in zip(self._groups, self._ray.get([a.members.remote() for a in self._actors]), strict=True):
            for i, member in zip(group, held, strict=True):
                out[i] = member
        return out

    def __len__(self) -> int:
        return len(self._members) if self._ray is None else sum(map(len, self._groups))


class _Members:
    """The actor holding some members of a ``Crowd``; it takes their calls one after another."""

    def __init__(self, members: list[Any]) -> None:
        self._members = members

    def call(self, method: str, args: list[tuple]) -> list[Any]:
        # arguments that arrive as object references inside the tuples are fetched here
        import ray

        fetched = [tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in call) for call in args]
        return [getattr(m, method)(*a) for m, a in zip(self._members, fetched, strict=True)]

    def get(self, name: str) -> list[Any]:
        return [getattr(m, name) for m in self._members]

    def members(self) -> list[Any]:
        return self._members


__all__ = ["RETRIES", "Crowd", "connect", "run_jobs"]
