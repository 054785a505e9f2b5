"""A whole system as child processes: one worker per service and the orchestrator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from saga import broker
from saga.config import SERVICES, Settings
from saga.processes import Child, saga_command, stop_all, wait_for
from workers import inventory


class Cluster:
    def __init__(
        self,
        settings: Settings,
        *,
        orchestrator: bool = True,
        orchestrator_args: Sequence[str] = (),
    ):
        self.settings = settings
        env = {**settings.to_env(), "PYTHONUNBUFFERED": "1"}
        logs = settings.data_dir / "logs"
        self.workers = {
            s: Child(f"worker {s}", saga_command("worker", s), env, logs / f"{s}.log")
            for s in SERVICES
        }
        self.orchestrator = Child(
            "orchestrator",
            saga_command("orchestrator", *orchestrator_args),
            env,
            logs / "orchestrator.log",
        )
        self.with_orchestrator = orchestrator

    @property
    def children(self) -> list[Child]:
        workers = list(self.workers.values())
        return [*workers, self.orchestrator] if self.with_orchestrator else workers

    def prepare(self, stock: Mapping[str, int]) -> Cluster:
        """Empty the system's queues (left by an earlier run) and set the stock."""
        broker.purge(self.settings.broker_url, self.settings.all_queues())
        db = inventory.service.database(self.settings.data_dir)
        for sku, quantity in stock.items():
            inventory.set_stock(db, sku, quantity)
        return self

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
