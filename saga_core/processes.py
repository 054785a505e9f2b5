"""Looking at processes from outside: a process's children, waiting for a condition with a
deadline (never a fixed sleep), and leaving with the process that started this one."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from saga_core.periodic import Periodic

T = TypeVar("T")

log = logging.getLogger("saga.processes")

#: Seconds a process whose parent died has to stop by itself before it is killed.
GRACE = 10.0


def children_of(pid: int) -> list[int]:
    """The PIDs of a process's children (Linux), e.g. a prefork worker's pool."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Stop this process once ``parent_pid`` (the process that started it) is gone: a warm
    stop (SIGTERM), and SIGKILL where that has not ended it in ``GRACE`` seconds. So a test
    run or a campaign killed midway (a timeout, SIGKILL) leaves no worker behind, whichever
    of its threads started it (``PR_SET_PDEATHSIG`` follows the starting thread instead)."""
    orphaned_at: list[float] = []

    def tick() -> None:
        if os.getppid() == parent_pid:
            return
        if not orphaned_at:
            log.warning("the process that started this one (pid %d) is gone: stopping", parent_pid)
            orphaned_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)
        elif time.monotonic() - orphaned_at[0] > GRACE:
            os.kill(os.getpid(), signal.SIGKILL)

    Periodic("saga-parent-watch", interval, tick).start()
