"""A synchronous stand-in for the broker and the workers: each published command crosses
the message contract (to the wire and back), runs through the real step wrapper
(``workers.task.StepRunner``) and the real service code, and the test hands the outcome
to the engine. Retries run at once, without their backoff."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.definition import SagaDefinition
from orchestrator.engine import Engine
from orchestrator.liveness import QueueDepth
from order_app import inventory
from saga_core.config import Settings
from saga_core.messages import Command, Outcome
from saga_faults.middleware import Faults
from saga_faults.plans import FaultPlans
from saga_store import SagaView
from tests.helpers import DEFINITIONS, OPERATIONS, STOCK
from workers.task import Retry, StepRunner


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
        self.commands: deque[Command] = deque()
        self.plans = FaultPlans(data_dir, OPERATIONS)
        self.faults = Faults(self.settings)
        self.engine = self.restart()
        db = inventory.service.database(data_dir)
        for sku, qty in STOCK.items():
            inventory.set_stock(db, sku, qty)

    def restart(
        self,
        queue_depth: QueueDepth | None = None,
        definitions: Mapping[str, SagaDefinition] = DEFINITIONS,
        retired: Sequence[SagaDefinition] = (),
    ) -> Engine:
        """A new engine on the same store; ``queue_depth`` tells it how many messages wait
        on each service's queue (without it, every queue counts as empty)."""
        self.engine = Engine(
            self.settings,
            definitions,
            self.publish,
            clock=self.clock,
            queue_depth=queue_depth,
            retired=retired,
        )
        return self.engine

    def publish(self, commands: Sequence[Command], sent: Callable[[], None]) -> None:
        for c in commands:
            self.commands.append(Command.from_wire(c.operation, c.to_wire()))
        sent()

    def execute_next(self) -> Outcome:
        command = self.commands.popleft()
        runner = StepRunner(self.settings, OPERATIONS[command.operation], [self.faults])
        tries = 0
        while isinstance(result := runner.run(command, tries), Retry):
            tries += 1
        assert result is not None, "nothing else runs the key here: the lease was free"
        return Outcome.from_wire(result.to_wire())

    def run_all(self) -> list[str]:
        operations = []
        while self.commands:
            operations.append(self.commands[0].operation)
            self.engine.handle_outcome(self.execute_next())
        return operations

    def submit(self, order: dict[str, Any], faults: dict[str, Any] | None = None) -> str:
        """Submit ``order``, with a fault plan for it where given."""
        if faults is not None:
            self.plans.add(order["order_id"], faults)
        return self.engine.submit("order", order).saga_id

    def saga(self, saga_id: str) -> SagaView:
        return self.engine.get(saga_id)
