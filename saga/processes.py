"""Starting and stopping child processes by PID, with a deadline on every wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def saga_command(*args: str) -> list[str]:
    """The ``saga`` CLI as a child command, with this very interpreter."""
    return [sys.executable, "-m", "saga.cli", *args]


class Child:
    """A child process whose output goes to a log file; stopped by its PID only."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, list(argv), dict(env), log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the main process only (its pool children die with it or are
        reaped by it)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL for the process group if it lingers."""
        if self.proc is None:
            return
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Leftover pool children of a killed main process share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout)

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting for it (see :func:`stop_all`)."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(children: Sequence[Child], timeout: float = 10.0) -> None:
    """Stop several children at once: a warm shutdown takes a prefork worker seconds."""
    for child in children:
        child.terminate()
    for child in children:
        child.stop(timeout)


def children_of(pid: int) -> list[int]:
    """The PIDs of a process's children (Linux), e.g. a prefork worker's pool."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
