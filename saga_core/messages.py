"""The messages that cross the broker, defined once and checked on receipt by both sides.

- A **command** (orchestrator → service) asks a service to run one operation for a step of
  a saga: the step's action or its compensation. It travels as the one argument of the
  Celery task named after the operation, on the service's queue.
- An **outcome** (service → orchestrator) answers one dispatch of a command. It travels as
  the one argument of the task ``saga.outcome``, on the orchestrator's queue.
- A **heartbeat** (service worker → orchestrator), sent every ``SAGA_HEARTBEAT_INTERVAL``
  by every worker, names the worker and the dispatches it holds (running, or waiting for a
  retry): how the orchestrator tells a step that runs long from one whose worker died. It
  travels as the one argument of the task ``saga.heartbeat``, on the orchestrator's queue.
- A **ping** (a health check → whoever consumes a queue), the task ``saga.ping``, asks for a
  **pong** on a reply queue of the sender's own: proof that a process takes messages from
  that queue and acts on them (``saga_core.ping``).
- A **submission** (client → orchestrator) is the task ``saga.submit`` with a saga's input
  document as its one argument; the saga's definition validates it, as for any client.

Commands, outcomes and heartbeats carry ``v``, the version of this contract. A receiver refuses a
message of a version it does not know (or of a shape it cannot read) with
:class:`MalformedMessage`, naming the problem, rather than guess at its meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from saga_core.errors import MalformedMessage
from saga_core.retry import RetryPolicy
from saga_core.wire import finite

#: The version of the contract this code speaks.
VERSION = 1

OUTCOME_TASK = "saga.outcome"
SUBMIT_TASK = "saga.submit"
HEARTBEAT_TASK = "saga.heartbeat"
PING_TASK = "saga.ping"

MAX_ID_LENGTH = 200

#: The largest count a message may carry (attempts, tries, a process id): what every store
#: column holds, far beyond any real one.
MAX_COUNT = 2**31 - 1

#: The longest heartbeat interval a worker may announce, in seconds.
MAX_INTERVAL = 3600.0

#: What a signature names a message as (``saga_core.signing``), so that one kind of message
#: signed cannot pass for another: a command's kind names its operation (``command_kind``).
OUTCOME_KIND = "outcome"
HEARTBEAT_KIND = "heartbeat"
SUBMISSION_KIND = "submission"


def submission_kind(saga: str | None) -> str:
    """The kind of a submission to ``saga`` (None: the app's first saga), so that one signed
    for one saga cannot start another."""
    return SUBMISSION_KIND if saga is None else f"{SUBMISSION_KIND}:{saga}"


def submission_saga(kwargs: Any) -> str | None:
    """The saga a broker submission names (``saga.submit`` with ``saga=NAME``); None where
    it names none. ``MalformedMessage`` for anything else in its keyword arguments."""
    if not kwargs:
        return None
    saga = kwargs.get("saga") if isinstance(kwargs, dict) and len(kwargs) == 1 else None
    if not isinstance(saga, str) or not 0 < len(saga) <= MAX_ID_LENGTH:
        raise MalformedMessage(f"{SUBMIT_TASK}: its one keyword argument is saga=NAME")
    return saga


def command_kind(operation: str) -> str:
    """The kind of a command for ``operation``: one signed for an operation cannot be sent
    as another."""
    return f"command:{operation}"


class Phase(StrEnum):
    """Which half of a step a command or an outcome is about."""

    ACTION = "action"
    COMPENSATION = "compensation"


class Status(StrEnum):
    """What a service says of one dispatch."""

    SUCCEEDED = "succeeded"  # the effect took place (now, or before under the same key)
    REJECTED = "rejected"  # refused for a business reason: no effect, never retried
    EXHAUSTED = "exhausted"  # the service's retries ran out: an effect may have taken place


@dataclass(frozen=True)
class Command:
    """Run ``operation`` for ``step`` of saga ``saga_id`` (dispatch number ``attempt``)."""

    operation: str  # the service operation, also the Celery task's name
    saga_id: str
    step: str
    phase: Phase
    attempt: int
    payload: dict[str, Any]
    retry: RetryPolicy
    queue: str = ""  # the service queue, without any prefix: routing, not on the wire

    @property
    def key(self) -> str:
        """The idempotency key: one effect per saga and step, however often it is sent."""
        return f"{self.saga_id}:{self.step}"

    @property
    def kind(self) -> str:
        """What its signature says it is (``command_kind``)."""
        return command_kind(self.operation)

    def to_wire(self) -> dict[str, Any]:
        return {**_address(self), "payload": self.payload, "retry": self.retry.to_dict()}

    @classmethod
    def from_wire(cls, operation: str, body: Any) -> Command:
        """The command in ``body``; raises :class:`MalformedMessage` naming what is wrong."""
        b = _Body("command", body)
        payload = b.get("payload")
        if not isinstance(payload, dict):
            raise MalformedMessage("command: payload must be an object")
        try:
            retry = RetryPolicy.parse(b.get("retry"))
        except (TypeError, ValueError) as exc:
            raise MalformedMessage(f"command: retry is not a retry policy: {exc}") from None
        return cls(operation=operation, **b.address(), payload=payload, retry=retry)

    def answer(
        self, status: Status, tries: int, output: Any = None, error: str | None = None
    ) -> Outcome:
        """The outcome that answers this command."""
        return Outcome(
            self.saga_id, self.step, self.phase, self.attempt, status, tries, output, error or ""
        )


@dataclass(frozen=True)
class Outcome:
    """A service's answer about dispatch ``attempt`` of a step, after ``tries`` runs."""

    saga_id: str
    step: str
    phase: Phase
    attempt: int
    status: Status
    tries: int
    output: Any = None
    error: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            **_address(self),
            "status": self.status.value,
            "tries": self.tries,
            "output": self.output,
            "error": self.error,
        }

    @classmethod
    def from_wire(cls, body: Any) -> Outcome:
        """The outcome in ``body``; raises :class:`MalformedMessage` naming what is wrong."""
        b = _Body("outcome", body)
        status = b.get("status")
        if not isinstance(status, str) or status not in Status._value2member_map_:
            raise MalformedMessage(
                f"outcome: status must be one of {', '.join(Status)}, got {status!r:.40}"
            )
        error = b.get("error", "")
        if not isinstance(error, str | None):
            raise MalformedMessage("outcome: error must be a string")
        return cls(
            **b.address(),
            status=Status(status),
            tries=b.count("tries"),
            output=b.get("output"),
            error=error or "",
        )


@dataclass(frozen=True)
class Held:
    """One dispatch a worker holds: which step of which saga, in which phase."""

    saga_id: str
    step: str
    phase: Phase
    attempt: int


#: The most dispatches one heartbeat lists (a worker holds one per pool slot, plus those
#: waiting for a retry): more is a malformed heartbeat, not a busy worker.
MAX_HELD = 1000

#: The most reasons a heartbeat's refusal counts may name.
MAX_REASONS = 16


@dataclass(frozen=True)
class Heartbeat:
    """Worker ``worker`` (process ``pid``, serving ``services``) is alive and holds ``held``;
    the next heartbeat follows in ``interval`` seconds. ``refused`` counts, by reason, the
    messages the worker has refused since it started (``saga_core.signing``)."""

    worker: str
    pid: int
    services: tuple[str, ...]
    interval: float
    held: tuple[Held, ...] = ()
    refused: Mapping[str, int] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "worker": self.worker,
            "pid": self.pid,
            "services": list(self.services),
            "interval": self.interval,
            "held": [{k: v for k, v in _address(h).items() if k != "v"} for h in self.held],
            "refused": dict(self.refused),
        }

    @classmethod
    def from_wire(cls, body: Any) -> Heartbeat:
        """The heartbeat in ``body``; raises :class:`MalformedMessage` naming what is wrong."""
        b = _Body("heartbeat", body)
        services, held, interval = b.get("services"), b.get("held"), b.get("interval")
        if not isinstance(services, list) or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_ID_LENGTH for s in services
        ):
            raise MalformedMessage("heartbeat: services must be a list of names")
        if not finite(interval) or not 0 < interval <= MAX_INTERVAL:
            raise MalformedMessage(
                f"heartbeat: interval must be a number of seconds above 0, at most {MAX_INTERVAL:g}"
            )
        if not isinstance(held, list) or len(held) > MAX_HELD:
            raise MalformedMessage(f"heartbeat: held must be a list of at most {MAX_HELD}")
        if not all(isinstance(h, Mapping) for h in held):
            raise MalformedMessage("heartbeat: each held entry must be an object")
        refused = b.get("refused", {})
        if (
            not isinstance(refused, Mapping)
            or len(refused) > MAX_REASONS
            or not all(
                isinstance(r, str) and len(r) <= 40 and type(n) is int and 0 <= n <= MAX_COUNT
                for r, n in refused.items()
            )
        ):
            raise MalformedMessage("heartbeat: refused must map reasons to counts")
        return cls(
            worker=b.text("worker"),
            pid=b.count("pid"),
            services=tuple(services),
            interval=float(interval),
            # each entry is read like a command's address, so it is checked the same way
            held=tuple(Held(**_Body("heartbeat", {**h, "v": VERSION}).address()) for h in held),
            refused=dict(refused),
        )


#: The only queues a ping may name for its answer: a process answers into no queue of the
#: system's, whoever sent the ping.
PONG_QUEUE = re.compile(r"saga\.pong\.[0-9a-f]{32}")


@dataclass(frozen=True)
class Ping:
    """Answer with a :class:`Pong` on queue ``reply_to``, unless past ``deadline`` (a Unix
    time), when nobody waits for the answer any more."""

    reply_to: str
    deadline: float

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "reply_to": self.reply_to, "deadline": self.deadline}

    @classmethod
    def from_wire(cls, body: Any) -> Ping:
        """The ping in ``body``; raises :class:`MalformedMessage` naming what is wrong."""
        b = _Body("ping", body)
        reply_to, deadline = b.get("reply_to"), b.get("deadline")
        if not isinstance(reply_to, str) or not PONG_QUEUE.fullmatch(reply_to):
            raise MalformedMessage("ping: reply_to must name a queue saga.pong.<32 hex digits>")
        if not finite(deadline):
            raise MalformedMessage("ping: deadline must be a Unix time")
        return cls(reply_to, float(deadline))


@dataclass(frozen=True)
class Pong:
    """``responder`` (process ``pid``) took a ping from its queue and answered it."""

    responder: str
    pid: int

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "responder": self.responder, "pid": self.pid}

    @classmethod
    def from_wire(cls, body: Any) -> Pong:
        b = _Body("pong", body)
        return cls(b.text("responder"), b.count("pid"))


def _address(m: Command | Outcome | Held) -> dict[str, Any]:
    """What every message says first: its version, and which dispatch of which step."""
    return {
        "v": VERSION,
        "saga_id": m.saga_id,
        "step": m.step,
        "phase": m.phase.value,
        "attempt": m.attempt,
    }


class _Body:
    """A received message's fields, each read with a check that names what is wrong."""

    def __init__(self, kind: str, body: Any):
        self.kind = kind
        if not isinstance(body, Mapping):
            raise MalformedMessage(f"{kind}: must be an object, got {type(body).__name__}")
        version = body.get("v")
        if version != VERSION:
            raise MalformedMessage(
                f"{kind}: unknown version {version!r:.20} (this process speaks {VERSION})"
                if version is not None
                else f"{kind}: no version field 'v' (this process speaks {VERSION})"
            )
        self.body = body

    def address(self) -> dict[str, Any]:
        """The fields :func:`_address` writes, read back and checked."""
        return {
            "saga_id": self.text("saga_id"),
            "step": self.text("step"),
            "phase": self.phase(),
            "attempt": self.count("attempt"),
        }

    def get(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default)

    def text(self, name: str) -> str:
        value = self.body.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise MalformedMessage(
                f"{self.kind}: {name} must be a non-empty string of at most "
                f"{MAX_ID_LENGTH} characters"
            )
        return value

    def count(self, name: str) -> int:
        value = self.body.get(name)
        if type(value) is not int or not 1 <= value <= MAX_COUNT:
            raise MalformedMessage(
                f"{self.kind}: {name} must be a whole number from 1 to {MAX_COUNT}"
            )
        return value

    def phase(self) -> Phase:
        value = self.body.get("phase")
        if not isinstance(value, str) or value not in Phase._value2member_map_:
            raise MalformedMessage(f"{self.kind}: phase must be 'action' or 'compensation'")
        return Phase(value)
