"""Random SIGKILLs of a running system's processes, each dead one started again after a
short random delay: what ``saga chaos`` and ``saga demo --kill-every`` do to a cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from collections.abc import Mapping, Sequence
from typing import Protocol

from saga_core.processes import leaves

log = logging.getLogger("saga.killer")

KINDS = ("worker", "pool child", "orchestrator")


class Child(Protocol):
    """A process the killer may kill and start again (``saga_tools.cluster.Child``)."""

    name: str

    @property
    def pid(self) -> int: ...
    def alive(self) -> bool: ...
    def kill(self, sig: int = signal.SIGKILL) -> None: ...
    def wait(self, timeout: float) -> None: ...
    def stop(self, timeout: float = 10.0) -> None: ...
    def start(self) -> object: ...


class Cluster(Protocol):
    """A running system: its processes, some of which are orchestrators."""

    @property
    def children(self) -> Sequence[Child]: ...
    @property
    def orchestrators(self) -> Sequence[Child]: ...


class Killer:
    """Kills one process at a time: a worker's main process (its supervisor), the process
    that runs its steps (kind "pool child": a prefork worker's pool child, or a solo
    worker's Celery process) or the orchestrator, drawn with the given ``weights``. A child
    is replaced by its worker; a killed main process is started again 0.5-3 s later by
    :meth:`restart_due`."""

    def __init__(self, cluster: Cluster, rng: random.Random, weights: Mapping[str, float]):
        self.cluster, self.rng = cluster, rng
        self.kinds = [k for k in KINDS if weights.get(k)]
        self.weights = [weights[k] for k in self.kinds]
        self.restarts: list[tuple[float, Child]] = []
        self.exits = 0  # processes that died without being killed, started again

    def kill_one(self, now: float) -> tuple[str, str] | None:
        """SIGKILL one process; returns what was killed (kind, process name), if anything."""
        alive = [c for c in self.cluster.children if c.alive()]
        orchestrators = [c for c in alive if c in self.cluster.orchestrators]
        workers = [c for c in alive if c not in orchestrators]
        if not alive:
            return None
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if (kind == "orchestrator" and orchestrators) or not workers:
            # (one orchestrator draws nothing: a seed replays as before there were more)
            target = orchestrators[0] if len(orchestrators) == 1 else self.rng.choice(orchestrators)
            kind = "orchestrator"
        else:
            kind = "worker" if kind == "orchestrator" else kind
            target = self.rng.choice(workers)
        pool = leaves(target.pid) if kind == "pool child" else []
        if pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pool), signal.SIGKILL)
        else:
            kind = "worker" if kind == "pool child" else kind
            target.kill(signal.SIGKILL)
            target.wait(10)
            target.stop()  # reap it and its orphaned pool children
            self.restarts.append((now + self.rng.uniform(0.5, 3.0), target))
        log.info("killed %s (%s)", target.name, kind)
        return kind, target.name

    def restart_due(self, now: float) -> list[str]:
        """Start again every killed process whose delay has passed, and at once any that
        exited on its own (as a supervisor would: a prefork worker whose pool child is
        killed while it starts exits with "Could not start worker processes"); returns
        their names."""
        waiting = {id(child) for _, child in self.restarts}
        for child in self.cluster.children:
            if id(child) not in waiting and not child.alive():
                log.warning("%s exited on its own; starting it again", child.name)
                child.stop()  # reap it and any orphaned pool children
                self.exits += 1
                self.restarts.append((now, child))
        started = []
        for due, child in list(self.restarts):
            if now >= due:
                child.start()
                self.restarts.remove((due, child))
                started.append(child.name)
        return started
