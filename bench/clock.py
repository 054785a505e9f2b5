"""One clock for every system the bench runs.

A workflow's latency runs from the moment its client hands it over (before the order is
validated, for every system) to the moment that client first sees it ended, through one
polling reader of the same make for every system: a thread that asks, every ``interval``,
which of the workflows still pending have ended (a saga in a terminal state in the store,
a chain's reply on its queue, celery-saga's record marked completed, a DBOS workflow's
call returned) and stamps the ones it finds. So no system is timed from a record of its
own, stamped after validation or before its client could know.

What each system records of itself (a saga's history, celery-saga's record) is kept as a
second figure, labelled ``recorded``: the clock every figure before this one was read by.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from itertools import islice
from types import TracebackType

#: The reader's pace at a fixed offered load, where latency is what is measured: a
#: millisecond, a fifth of the bare chain's p50 here.
AT_LOAD = 0.001
#: Its pace at saturation, where only the count over the time is read (and the client's
#: CPU is counted): the last end is late by at most this, a few tenths of a percent.
SATURATED = 0.02

#: How many of the pending workflows the reader asks about each time: the longest waiting.
#: Workflows end about in the order they were handed over, and asking about every one of
#: thousands at saturation, 50 times a second, cost the system's own database: at 2,000
#: sagas, PostgreSQL's server spent a sixth of its CPU per saga parsing and looking up
#: the ids of sagas far from ending.
ASKED = 256


class BenchTimeout(RuntimeError):
    """A run that did not end: the bench fails rather than report a smaller count."""


class Ends:
    """The ends of one run's workflows as their client sees them.

    ``ended(pending)`` answers which of the ids in ``pending`` have ended (it may name
    others too, as a queue of replies does; they are stamped as well)."""

    def __init__(self, what: str, ended: Callable[[list[str]], Iterable[str]], interval: float):
        self.what, self._ended, self.interval = what, ended, interval
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        #: in the order handed over (a dict keeps it)
        self._pending: dict[str, None] = {}
        self._lock = threading.Lock()
        self._all_in = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="bench-ends", daemon=True)

    def __enter__(self) -> Ends:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def handed(self, key: str, at: float) -> None:
        """Workflow ``key`` was handed over at ``at`` (``time.monotonic()``)."""
        with self._lock:
            self.started[key] = at
            if key not in self.finished:
                self._pending[key] = None

    def wait(self, count: int, timeout: float) -> None:
        """Until ``count`` workflows have ended; :class:`BenchTimeout` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._all_in:
            while len(self.finished) < count and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchTimeout(
                        f"{self.what}: {len(self.finished)} of {count} ended in {timeout:.0f}s"
                    )
                self._all_in.wait(left)
        if self._error is not None:
            raise BenchTimeout(f"{self.what}: the reader failed: {self._error!r}")

    def latencies(self) -> list[float]:
        return [self.finished[k] - self.started[k] for k in self.finished if k in self.started]

    def last(self, default: float) -> float:
        return max(self.finished.values(), default=default)

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    pending = list(islice(self._pending, ASKED))
                found = list(self._ended(pending)) if pending else []
                now = time.monotonic()
                if found:
                    with self._all_in:
                        for key in found:
                            self.finished.setdefault(key, now)
                            self._pending.pop(key, None)
                        self._all_in.notify_all()
                self._stop.wait(self.interval)
        except BaseException as exc:  # said by wait(), in the client's thread
            with self._all_in:
                self._error = exc
                self._all_in.notify_all()
