"""Leases: one run of an idempotency key at a time, across every worker of a service.

The orchestrator sends a step again when it stops hearing of the worker that holds it; that
worker may only be cut off (a network partition, a long pause) and still running it. The
ledger alone would keep the effect from happening twice, but the second run would wait on
the service database's write lock and then retry until it gave up, failing a step that is
about to succeed. So a run first takes a lease on its key and a run that finds the lease
taken leaves the step to its holder.

Where the service's database is a SQLite file, a lease is a POSIX record lock on one byte
of the service's lease file (beside it), at an offset drawn from the key. The kernel
releases it when its process dies, however it dies: a lease never outlives its holder,
and needs no renewal timer and no clock. The lock is per process (and each process keeps
the file open for good: closing any descriptor of it would drop every lease the process
holds), so threads of one process also keep a set of the keys they run.

Where the database is PostgreSQL, shared by replicas on many hosts, the lease is the lock
the ledger's transaction takes on its key, without waiting, as its first statement
(``workers.ledger``): an advisory lock the server drops when the transaction ends, however
its process dies, as the kernel does a record lock. It is held while the run's effect and
ledger row are written, which is what it guards, and costs no round trip of its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol


class Leases(Protocol):
    def hold(self, key: str) -> AbstractContextManager[bool]: ...


class InTransaction:
    """PostgreSQL's leases: nothing to take before the run; the ledger's transaction takes
    its key (and raises ``workers.ledger.UnderWay`` where another run holds it)."""

    @contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        yield True


class FileLeases:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid = 0
        self._mutex = threading.Lock()
        self._running: set[str] = set()

    @contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        """Take the lease on ``key`` for the block; yields False, holding nothing, where a
        live run (in this process or another) holds it."""
        with self._mutex:
            taken = key not in self._running and self._lock(key)
            if taken:
                self._running.add(key)
        try:
            yield taken
        finally:
            if taken:
                with self._mutex:
                    self._running.discard(key)
                    self._unlock(key)

    def _file(self) -> int:
        # A forked child has no record locks of its parent's: it takes its own on a
        # descriptor of its own.
        if self._fd is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
            self._running = set()
        return self._fd

    def _lock(self, key: str) -> bool:
        try:
            fcntl.lockf(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(key))
        except (BlockingIOError, PermissionError):
            return False
        return True

    def _unlock(self, key: str) -> None:
        fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, _offset(key))


def _offset(key: str) -> int:
    """A byte of its own for each key: 48 bits of its hash, so two keys meet by chance
    about once in 10^14 pairs."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")
