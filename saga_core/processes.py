"""Looking at processes from outside: a process's children, waiting for a condition with a
deadline (never a fixed sleep), leaving with the process that started this one, and
supervising a child that must be started again when it is killed."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux), nearest first: a supervised worker's Celery
    process, and a prefork worker's pool under it."""
    return [p for p, _ in _tree(pid) if p != pid]


def leaves(pid: int) -> list[int]:
    """The processes at the bottom of ``pid``'s tree, where a step runs: a solo worker's
    Celery process, a prefork worker's pool children."""
    return [p for p, children in _tree(pid) if p != pid and not children]


def _tree(pid: int) -> Iterator[tuple[int, list[int]]]:
    """``pid`` and each process below it, nearest first, with its children; one that ends
    meanwhile is left out."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            children = children_of(p)
        except OSError:  # it ended meanwhile
            continue
        yield p, children
        todo += children


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


#: Signals a supervisor passes on to its child instead of acting on them itself.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)

#: Seconds a child must have run for its next death to be restarted without a pause.
STEADY = 30.0


#: The exit status of a child that cannot run as configured (the CLI's bad input): starting
#: it again would fail the same way.
EXIT_CONFIGURATION = 2


def supervise(argv: Sequence[str], env: Mapping[str, str], what: str) -> int:
    """Run ``argv`` as a child and start it again each time it ends without being asked
    to: killed by a signal (SIGKILL by the kernel's out-of-memory killer or by hand,
    SIGSEGV in a C extension, a step that kills its process) or exiting by itself, status
    0 included (Celery ends a worker that way on an error it calls unrecoverable). Return
    its exit code once it ends after a stop was asked for, or with status
    :data:`EXIT_CONFIGURATION` (it cannot run as configured).

    What a prefork worker's main process does for its pool child, for a worker without one:
    the supervisor does nothing per message, so a step costs no hand-over between
    processes. The signals in :data:`FORWARDED` are passed on once (a terminal's Ctrl-C does
    not reach the child twice, which Celery would take for a cold shutdown), and the child
    dies with the supervisor (:func:`die_with_parent`). A child that keeps dying soon after
    its start is started again after a growing pause (up to 30 s), not in a tight loop.
    """
    stopping: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    pause = 0.0
    try:
        while True:
            started = time.monotonic()
            # its own process group: a terminal's signals reach it through us only
            child = subprocess.Popen(list(argv), env=dict(env), process_group=0)
            if stopping:  # asked before the child existed to be told
                child.send_signal(stopping[0])
            code = child.wait()  # a forwarded signal does not interrupt it (PEP 475)
            status = code if code >= 0 else 128 - code
            if stopping or code == EXIT_CONFIGURATION:
                return status
            ran = time.monotonic() - started
            pause = 0.0 if ran >= STEADY else min(max(2 * pause, 0.5), 30.0)
            how = (
                f"was killed by {signal.Signals(-code).name}"
                if code < 0
                else f"exited by itself (status {code})"
            )
            log.warning(
                "%s (pid %d) %s after %.1f s; starting it again in %.1f s",
                what,
                child.pid,
                how,
                ran,
                pause,
            )
            if _sleep_unless(pause, stopping):
                return status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _sleep_unless(seconds: float, stopping: list[int]) -> bool:
    """Pause ``seconds`` unless a stop is asked for meanwhile; True if it was."""
    deadline = time.monotonic() + seconds
    while not stopping and time.monotonic() < deadline:
        time.sleep(min(0.1, seconds))
    return bool(stopping)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process the moment ``parent_pid``, its parent, dies (Linux
    ``PR_SET_PDEATHSIG``): a SIGKILLed supervisor takes its child with it at once, as a
    killed prefork worker takes its pool child, and nothing runs on unsupervised."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # it died before the call took effect
        os.kill(os.getpid(), signal.SIGKILL)
