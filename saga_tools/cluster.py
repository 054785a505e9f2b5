"""A whole system as child processes: one worker per service and the orchestrator, each
started and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from order_app import inventory
from saga_app.app import of as app_of
from saga_core import broker
from saga_core.config import Settings
from saga_core.database import Connection
from saga_core.processes import wait_for
from saga_faults import switch
from saga_faults.plans import FaultPlans


def saga_command(*args: str) -> list[str]:
    """The ``saga`` CLI as a child command, with this very interpreter."""
    return [sys.executable, "-m", "saga_tools.cli", *args]


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
                # It leaves when this process does (saga_core.processes.exit_with_parent).
                env={**os.environ, **self.env, "SAGA_PARENT_PID": str(os.getpid())},
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

    def wait(self, timeout: float) -> None:
        """Until the process has ended (after a kill, say)."""
        if self.proc is not None:
            self.proc.wait(timeout)

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


def worker_env(settings: Settings, service: str) -> dict[str, str]:
    """The environment of ``service``'s worker: with its own signing key and no other, as a
    deployment would give it (a worker holding every key could speak for every service)."""
    own = {service: settings.keys[service]} if service in settings.keys else {}
    return {**settings.with_(keys=own).to_env(), "PYTHONUNBUFFERED": "1"}


class Cluster:
    """A system's processes: ``replicas`` workers per service (Celery pool ``pool``, by
    default ``saga worker``'s for the broker) and
    ``orchestrators`` orchestrators, all on the same broker and databases."""

    def __init__(
        self,
        settings: Settings,
        *,
        orchestrator: bool = True,
        orchestrator_args: Sequence[str] = (),
        orchestrators: int = 1,
        replicas: int = 1,
        pool: str | None = None,
        app_env: Mapping[str, str] | None = None,
    ):
        """``app_env``: the app's own settings (a provider's address, say), for every
        process."""
        self.settings = settings
        env = {**settings.to_env(), "PYTHONUNBUFFERED": "1", **(app_env or {})}
        logs = settings.data_dir / "logs"

        def numbered(name: str, n: int) -> str:
            return name if n == 0 else f"{name}.{n + 1}"

        self.replicas = {
            s: [
                Child(
                    numbered(f"worker {s}", n),
                    saga_command("worker", s, *(("--pool", pool) if pool else ())),
                    {**worker_env(settings, s), **(app_env or {})},
                    logs / f"{numbered(s, n)}.log",
                )
                for n in range(replicas)
            ]
            for s in settings.services
        }
        #: The first worker of each service.
        self.workers = {s: children[0] for s, children in self.replicas.items()}
        self.orchestrators = [
            Child(
                numbered("orchestrator", n),
                saga_command("orchestrator", *orchestrator_args),
                env,
                logs / f"{numbered('orchestrator', n)}.log",
            )
            for n in range(orchestrators if orchestrator else 1)
        ]
        self.orchestrator = self.orchestrators[0]
        self.with_orchestrator = orchestrator

    @property
    def children(self) -> list[Child]:
        workers = [c for children in self.replicas.values() for c in children]
        return [*workers, *self.orchestrators] if self.with_orchestrator else workers

    def prepare(self, stock: Mapping[str, int] | None = None) -> Cluster:
        """Empty the system's queues (left by an earlier run), then set the order saga's
        ``stock`` where given, or else put in place what the app's samples need
        (``App.setup``)."""
        broker.purge(self.settings.broker_url, self.settings.all_queues())
        app = app_of(self.settings)

        def database(service: str) -> Connection:
            return app.service(service).database(self.settings.service_database(service))

        if stock is not None:
            db = database(inventory.service.name)
            for sku, quantity in stock.items():
                inventory.set_stock(db, sku, quantity)
        elif app.setup is not None:
            app.setup(database)
        return self

    def plan_faults(self, reference: str, plan: Mapping[str, Any]) -> None:
        """What is to go wrong for order ``reference`` (see ``saga_faults.plans``): for a
        system started with ``faults`` on, before the order is submitted."""
        if not switch.is_on(self.settings):
            raise ValueError("fault plans need a system started with faults on (SAGA_FAULTS=1)")
        FaultPlans(self.settings.data_dir, app_of(self.settings).operations).add(reference, plan)

    def start(self) -> Cluster:
        for child in self.children:
            child.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> Cluster:
        """Until every process says it is ready (its log's "ready" line)."""
        wait_for(
            lambda: all("ready" in child.log_text() for child in self.children),
            timeout,
            "every worker and the orchestrator to be ready",
        )
        return self

    def stop(self) -> None:
        stop_all(self.children)
