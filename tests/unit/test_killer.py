"""The killer restarts what it killed after a delay, and at once what died by itself."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass

from saga_faults.killer import Killer


@dataclass
class FakeChild:
    name: str
    running: bool = True
    starts: int = 0

    @property
    def pid(self) -> int:
        return 0

    def alive(self) -> bool:
        return self.running

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.running = False

    def wait(self, timeout: float) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        self.running = False

    def start(self) -> FakeChild:
        self.running, self.starts = True, self.starts + 1
        return self


@dataclass
class FakeCluster:
    children: list[FakeChild]

    @property
    def orchestrators(self) -> list[FakeChild]:
        return self.children[-1:]


def test_a_process_that_died_by_itself_is_started_again_at_once() -> None:
    worker, orchestrator = FakeChild("worker payment"), FakeChild("orchestrator")
    killer = Killer(FakeCluster([worker, orchestrator]), random.Random(1), {"worker": 1})
    worker.running = False  # e.g. "Could not start worker processes"
    assert killer.restart_due(now=0.0) == ["worker payment"]
    assert worker.alive() and worker.starts == 1 and killer.exits == 1
    assert killer.restart_due(now=1.0) == []  # nothing else to do


def test_a_killed_process_waits_for_its_delay() -> None:
    worker, orchestrator = FakeChild("worker payment"), FakeChild("orchestrator")
    killer = Killer(FakeCluster([worker, orchestrator]), random.Random(1), {"worker": 1})
    assert killer.kill_one(now=0.0) == ("worker", "worker payment")
    assert killer.restart_due(now=0.1) == [] and not worker.alive()
    assert killer.restart_due(now=3.1) == ["worker payment"] and killer.exits == 0
