"""The saga store's vocabulary: state words, read-only views, commands to send."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from saga_core.messages import Phase


def iso(now: float) -> str:
    """A time (seconds since the epoch) as the store writes it: ISO 8601, UTC, in ms."""
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")


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


class Event(StrEnum):
    """What happened, as the saga's history records it."""

    CREATED = "created"  # stored by a client
    STARTED = "started"
    DISPATCHED = "dispatched"  # a command sent: step, phase, attempt
    REDISPATCHED = "redispatched"  # sent again by the sweeper: lost (note says why)
    RESENT = "resent"  # sent again by recovery, after an orchestrator restart
    SUCCEEDED = "succeeded"  # an outcome: step, phase, attempt
    REJECTED = "rejected"  # an outcome: a business refusal
    EXHAUSTED = "exhausted"  # an outcome: the service's retries ran out
    DUPLICATE = "duplicate_ignored"  # an outcome for a step not waiting for it
    GIVEN_UP = "given_up"  # no outcome within the dispatch budget
    COMPENSATING = "compensating"  # the saga turns back; error says why
    ALERT = "alert"  # a compensation gave up: a person must look
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    RETRY = "retry_requested"  # operator actions
    RESOLVED = "resolved"
    CANCELLED = "cancel_requested"


class Actor(StrEnum):
    """Who asked for a change (an operator's actions are recorded as ``operator:NAME``)."""

    CLIENT = "client"
    ORCHESTRATOR = "orchestrator"
    SWEEPER = "sweeper"
    RECOVERY = "recovery"
    OPERATOR = "operator"


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
    held_by: str | None = None  # the worker that last reported holding it, while in flight


#: Between a saga's name and its definition's version where the store records both
#: (``sagas.definition``: ``name@version``).
VERSION_MARK = "@"


#: Between a counter's name and the saga it counts for (``sagas_started/order``).
PER_SAGA = "/"


def stored_name(stored: str) -> tuple[str, str | None]:
    """``(name, version)`` of a stored definition (``name@version``); a saga stored before
    definitions had versions records its name alone (version None)."""
    name, mark, version = stored.partition(VERSION_MARK)
    return name, version if mark else None


def client_key(idempotency_key: str | None) -> str | None:
    """The client's own key of a saga (an order's id), from the key the store keeps it
    under: ``saga:key`` (``Engine._prepare``)."""
    return (idempotency_key or "").partition(":")[2] or None


@dataclass(frozen=True)
class SagaView:
    id: str
    definition: str  # the saga's name
    state: SagaState
    input: dict[str, Any]
    error: str | None
    created_at: str
    updated_at: str
    steps: tuple[StepView, ...]
    version: str | None = None  # of its definition; None: stored before versions
    key: str | None = None  # the client's idempotency key (an order's id)

    def step(self, name: str) -> StepView:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "saga": self.definition,
            "version": self.version,
            "key": self.key,
            "state": self.state.value,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "steps": [
                {
                    "name": s.name,
                    "state": s.state.value,
                    "output": s.output,
                    "error": s.error,
                    "held_by": s.held_by,
                }
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
    resolution: str | None = None  # "retried", or the note of the person who settled it


OUTCOME_EVENTS = frozenset(
    {Event.SUCCEEDED, Event.REJECTED, Event.EXHAUSTED, Event.DUPLICATE, Event.GIVEN_UP}
)
DISPATCH_EVENTS = frozenset({Event.DISPATCHED, Event.REDISPATCHED, Event.RESENT})


@dataclass(frozen=True)
class HistoryEvent:
    """One entry of a saga's history. ``duration_ms``, for an outcome, is the time since
    the dispatch it answers (same step, phase and attempt)."""

    id: int
    at: str
    event: Event
    actor: str
    step: str | None = None
    phase: Phase | None = None
    attempt: int | None = None
    tries: int | None = None
    error: str | None = None
    note: str | None = None
    duration_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "event": self.event.value,
            "actor": self.actor,
            "step": self.step,
            "phase": self.phase.value if self.phase else None,
            "attempt": self.attempt,
            "tries": self.tries,
            "error": self.error,
            "note": self.note,
            "duration_ms": self.duration_ms,
        }
