"""The saga store's vocabulary: state words, read-only views, commands to send."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SagaState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED})


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


class Phase(StrEnum):
    """Which half of a step a command or an outcome is about."""

    ACTION = "action"
    COMPENSATION = "compensation"


@dataclass(frozen=True)
class StepSpec:
    """What the store keeps of a step's definition, so transitions need no definition object."""

    name: str
    compensable: bool
    best_effort: bool
    timeout: float
    max_dispatches: int


@dataclass(frozen=True)
class Dispatch:
    """A command that a transition decided to send: run ``phase`` of ``step`` for ``saga_id``."""

    saga_id: str
    step: str
    phase: Phase
    attempt: int


@dataclass(frozen=True)
class StepView:
    name: str
    state: StepState
    output: Any
    error: str | None
    attempts: int
    compensation_attempts: int


@dataclass(frozen=True)
class SagaView:
    id: str
    definition: str
    state: SagaState
    input: dict[str, Any]
    error: str | None
    created_at: str
    updated_at: str
    steps: tuple[StepView, ...]

    def step(self, name: str) -> StepView:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": [
                {"name": s.name, "state": s.state.value, "output": s.output, "error": s.error}
                for s in self.steps
            ],
        }


@dataclass(frozen=True)
class Alert:
    id: int
    saga_id: str
    step: str
    error: str
    created_at: str
    resolved_at: str | None
