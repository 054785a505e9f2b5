"""A watchdog for a worker's consumer.

After a broker outage, Celery's Redis consumer can stop taking messages for good while the
process stays up (seen here after an ack failed mid-outage; reported upstream as workers
that "stop consuming after Redis reconnection"). Nothing would ever notice: the process
looks healthy. So each worker watches itself: when its queues hold messages, it holds
none, and it has received nothing for ``stall_timeout`` seconds, it re-executes itself in
place (same PID, fresh consumer). Its unacknowledged messages, if any, come back through
the broker's visibility timeout or the orchestrator's deadlines, as after any crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state

from saga_core.broker import QueueDepth
from saga_core.periodic import Periodic
from saga_core.processes import children_of

log = logging.getLogger("saga.watchdog")


class ConsumerWatchdog:
    def __init__(
        self,
        broker_url: str,
        queues: Sequence[str],
        stall_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        received: Callable[[], int] = lambda: state.all_total_count[0],
        busy: Callable[[], bool] = lambda: len(state.requests) > 0,
    ):
        """``received`` counts the messages taken so far and ``busy`` tells whether the
        consumer is at work rather than waiting; by default, a Celery worker's."""
        self.broker_url = broker_url
        self.queues = list(queues)
        self.stall_timeout = stall_timeout
        self.interval = max(0.5, stall_timeout / 5)
        self.clock = clock
        self.received, self.busy = received, busy
        self._received = received()
        self._stalled_since: float | None = None
        self.waiting = QueueDepth(broker_url, self.queues)

    def check(self) -> int:
        """One look; returns how many messages wait on a stalled consumer (0: not stalled)."""
        waiting = self.waiting()
        received = self.received()
        if not waiting or self.busy() or received != self._received:
            self._received, self._stalled_since = received, None
            return 0
        if self._stalled_since is None:
            self._stalled_since = self.clock()
        return waiting if self.clock() - self._stalled_since >= self.stall_timeout else 0

    def tick(self) -> None:
        waiting = self.check()
        if waiting:
            log.critical(
                "consumer stalled: %d message(s) waiting on %s, none received "
                "for %.0fs; restarting this worker",
                waiting,
                ", ".join(self.queues),
                self.stall_timeout,
            )
            restart_in_place()


def restart_in_place() -> None:
    """Replace this process with a fresh run of the same command (the PID stays)."""
    for child in children_of(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def install(app: Celery, broker_url: str, queues: Sequence[str], stall_timeout: float) -> None:
    """Run a :class:`ConsumerWatchdog` for as long as the worker of ``app`` runs."""

    class Watchdog(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            dog = ConsumerWatchdog(broker_url, queues, stall_timeout)
            self.watchdog = Periodic("saga-watchdog", dog.interval, dog.tick)

        def start(self, worker: Any) -> None:
            self.watchdog.start()

        def stop(self, worker: Any) -> None:
            self.watchdog.stop()

    app.steps["worker"].add(Watchdog)
