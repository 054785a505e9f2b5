"""A running system for a test: one worker process per service and the orchestrator,
each a real ``saga`` process on the real broker, stopped by PID when the test ends."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import saga_app
from saga_core.config import Settings
from saga_core.processes import wait_for
from saga_faults import switch
from saga_faults.switch import FailureRates
from saga_store import SagaView, open_store, queries
from saga_tools import redis_server
from saga_tools.cluster import Child, Cluster
from tests.helpers import STOCK


class System(Cluster):
    """A started :class:`Cluster` with what the tests ask of it."""

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def start(self) -> System:
        self.prepare(STOCK)
        super().start()
        return self

    def submit(self, order: dict[str, Any], faults: dict[str, Any] | None = None) -> str:
        """Submit ``order``, with a fault plan for it where given (``saga_faults.plans``)."""
        if faults is not None:
            self.plan_faults(order["order_id"], faults)
        return saga_app.submit(order, settings=self.settings)

    def wait(self, saga_id: str, timeout: float = 60) -> SagaView:
        return saga_app.wait(saga_id, settings=self.settings, timeout=timeout)

    def saga(self, saga_id: str) -> SagaView:
        """The saga as it is now."""
        return saga_app.get_saga(saga_id, settings=self.settings)

    def wait_step_running(
        self, operation: str, saga_id: str, step: str, timeout: float = 30
    ) -> None:
        """Until a slow step (fault ``delay_seconds``) has started in its worker."""
        marker = self.data_dir / "running" / f"{operation}.{saga_id}:{step}"
        wait_for(marker.exists, timeout, f"{operation} to start in its worker")

    def kill_and_wait(self, child: Child, sig: int = signal.SIGKILL) -> None:
        child.kill(sig)
        wait_for(lambda: not child.alive(), 10, f"{child.name} to die")
        child.stop()  # reap it and any orphaned pool children

    def counters(self) -> dict[str, int]:
        return queries.counters(open_store(self.settings.store()))

    def logs(self) -> str:
        return "\n".join(f"----- {c.name} -----\n{c.log_text()[-4000:]}" for c in self.children)


@pytest.fixture
def make_system(settings: Settings) -> Iterator[Callable[..., System]]:
    """Start a system, with settings changed as given; stopped (by PID) at the end."""
    started: list[System] = []

    def make(
        orchestrator_args: tuple[str, ...] = (),
        orchestrators: int = 1,
        replicas: int = 1,
        pool: str | None = None,
        faults: bool = True,
        failure_rates: Mapping[str, FailureRates] = {},
        **changes: Any,
    ) -> System:
        system = System(
            switch.switched(settings.with_(**changes), faults, failure_rates),
            orchestrator_args=orchestrator_args,
            orchestrators=orchestrators,
            replicas=replicas,
            pool=pool,
        ).start()
        started.append(system)
        return system

    yield make
    for system in started:
        system.stop()
        print(system.logs())  # shown by pytest only when the test failed


@pytest.fixture
def system(make_system: Callable[..., System]) -> System:
    return make_system()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[redis_server.OwnedRedis]:
    """A Redis server of the test's own, to kill and start again."""
    server = redis_server.OwnedRedis(tmp_path / "redis.pid")
    server.start()
    yield server
    server.stop()
