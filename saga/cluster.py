"""A whole system as child processes: one worker per service and the orchestrator."""

from __future__ import annotations

from saga.config import SERVICES, Settings
from saga.processes import Child, saga_command, stop_all


class Cluster:
    def __init__(self, settings: Settings, *, orchestrator: bool = True):
        self.settings = settings
        env = {**settings.to_env(), "PYTHONUNBUFFERED": "1"}
        logs = settings.data_dir / "logs"
        self.workers = {
            s: Child(f"worker {s}", saga_command("worker", s), env, logs / f"{s}.log")
            for s in SERVICES
        }
        self.orchestrator = Child(
            "orchestrator", saga_command("orchestrator"), env, logs / "orchestrator.log"
        )
        self.with_orchestrator = orchestrator

    @property
    def children(self) -> list[Child]:
        workers = list(self.workers.values())
        return [*workers, self.orchestrator] if self.with_orchestrator else workers

    def start(self) -> Cluster:
        for child in self.children:
            child.start()
        return self

    def stop(self) -> None:
        stop_all(self.children)
