"""A synchronous stand-in for the broker and the workers: each published command runs
against the real service code, and the test hands the outcome to the engine."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.engine import Command, Engine
from orchestrator.process import DEFINITIONS
from saga_core.config import Settings
from saga_core.errors import BusinessError
from saga_store import SagaView
from tests.helpers import STOCK
from workers import SERVICES, inventory


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """Runs each published command against the services, like a worker would, and hands
    back the outcome it would send."""

    def __init__(self, data_dir: Path):
        self.settings = Settings(data_dir=data_dir, step_timeout=30, max_dispatches=3)
        self.clock = Clock()
        self.commands: deque[tuple[str, dict[str, Any]]] = deque()
        self.engine = self.restart()
        db = inventory.service.database(data_dir)
        for sku, qty in STOCK.items():
            inventory.set_stock(db, sku, qty)

    def restart(self) -> Engine:
        self.engine = Engine(self.settings, DEFINITIONS, self.publish, clock=self.clock)
        return self.engine

    def publish(self, commands: Sequence[Command]) -> None:
        self.commands.extend((c.task, c.kwargs) for c in commands)

    def execute_next(self) -> dict[str, Any]:
        task, kw = self.commands.popleft()
        service = next(s for s in SERVICES.values() if task in s.operations)
        plan = (kw["fault_plan"] or {}).get(task, {})
        db = service.database(self.settings.data_dir)
        if plan.get("fail_transient", 0) > 0:
            return {**kw["reply"], "status": "exhausted", "error": f"{task} kept failing"}
        try:
            if plan.get("fail_business"):
                raise BusinessError(f"{task} refused")
            output, _ = service.run(db, task, kw["key"], kw["payload"])
        except BusinessError as exc:
            return {**kw["reply"], "status": "rejected", "error": exc.message}
        return {**kw["reply"], "status": "succeeded", "output": output}

    def run_all(self) -> list[str]:
        tasks = []
        while self.commands:
            tasks.append(self.commands[0][0])
            self.engine.handle_outcome(self.execute_next())
        return tasks

    def submit(self, order: dict[str, Any]) -> str:
        saga_id, _ = self.engine.submit("order", order)
        return saga_id

    def saga(self, saga_id: str) -> SagaView:
        return self.engine.get(saga_id)
