"""The saga state machine as data: every allowed change of a saga's state and of a step's,
``(from state, event) → to state``, written once. The transitions
(:mod:`saga_store.transitions`) change a state only through :func:`saga_move` and
:func:`step_move`, which refuse what this table does not hold.

A step in ``compensating`` is in one of two sub-states, told apart by its deadline:
*queued* (its compensation not yet sent: no deadline) or *in flight* (sent: its deadline
armed). Compensations run one at a time, last step first, so at most one step of a saga
is in flight; :func:`in_flight` names the test.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from saga_core.errors import TransitionRefused
from saga_store.models import SagaState, StepState


class SagaEvent(StrEnum):
    START = "start"  # its first step is sent
    NEXT_STEP = "next_step"  # a step completed and the next is sent
    FINISH = "finish"  # its last step completed
    TURN_BACK = "turn_back"  # a step failed, was given up, or an operator cancelled
    UNDONE = "undone"  # its last compensation ended, none gave up
    UNDONE_WITH_ALERT = "undone_with_alert"  # its last compensation ended, one gave up
    CANCEL_PENDING = "cancel_pending"  # an operator cancelled it before anything was sent
    RETRY = "retry"  # an operator retries its given-up compensations


class StepEvent(StrEnum):
    DISPATCH = "dispatch"  # its action is sent
    SUCCEED = "succeed"  # its action took effect
    FAIL = "fail"  # its action failed with nothing to undo (refused, or not compensable)
    UNDO = "undo"  # its effect stands, or may: its compensation is queued
    UNDONE = "undone"  # its compensation took effect
    GIVE_UP = "give_up"  # its compensation gave up: an alert for a person
    RETRY = "retry"  # an operator retries its given-up compensation


S, T = SagaState, StepState

SAGA_MOVES: Mapping[tuple[SagaState, SagaEvent], SagaState] = {
    (S.PENDING, SagaEvent.START): S.RUNNING,
    (S.PENDING, SagaEvent.CANCEL_PENDING): S.COMPENSATED,
    (S.RUNNING, SagaEvent.NEXT_STEP): S.RUNNING,
    (S.RUNNING, SagaEvent.FINISH): S.COMPLETED,
    (S.RUNNING, SagaEvent.TURN_BACK): S.COMPENSATING,
    (S.COMPENSATING, SagaEvent.UNDONE): S.COMPENSATED,
    (S.COMPENSATING, SagaEvent.UNDONE_WITH_ALERT): S.FAILED,
    (S.FAILED, SagaEvent.RETRY): S.COMPENSATING,
}

STEP_MOVES: Mapping[tuple[StepState, StepEvent], StepState] = {
    (T.PENDING, StepEvent.DISPATCH): T.RUNNING,
    (T.RUNNING, StepEvent.SUCCEED): T.COMPLETED,
    (T.RUNNING, StepEvent.FAIL): T.FAILED,
    (T.RUNNING, StepEvent.UNDO): T.COMPENSATING,
    (T.COMPLETED, StepEvent.UNDO): T.COMPENSATING,
    (T.COMPENSATING, StepEvent.UNDONE): T.COMPENSATED,
    (T.COMPENSATING, StepEvent.GIVE_UP): T.FAILED,
    (T.FAILED, StepEvent.RETRY): T.COMPENSATING,
}


def saga_move(current: SagaState, event: SagaEvent, what: str, saga_id: str) -> SagaState:
    """The saga's state after ``event``; ``TransitionRefused`` (saying ``what`` was
    refused) where the table holds no such move."""
    after = SAGA_MOVES.get((current, event))
    if after is None:
        raise TransitionRefused(f"{what} is not allowed from state '{current}'", saga_id=saga_id)
    return after


def step_move(
    current: StepState, event: StepEvent, what: str = "", saga_id: str = "", step: str = ""
) -> StepState:
    """The step's state after ``event``; ``TransitionRefused`` where the table holds no
    such move."""
    after = STEP_MOVES.get((current, event))
    if after is None:
        raise TransitionRefused(
            f"{what or event.value} is not allowed from step state '{current}'",
            saga_id=saga_id or None,
            step=step or None,
        )
    return after


def in_flight(step: Any) -> bool:
    """Whether a step's compensation has been sent (and its outcome not yet come back)."""
    return step["state"] == T.COMPENSATING and step["deadline_at"] is not None


def table() -> str:
    """Both tables as Markdown, for the docs (``docs/state-machine.md`` is made from it)."""
    lines = ["| saga in | event | goes to |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for (s, e), t in SAGA_MOVES.items()]
    lines += ["", "| step in | event | goes to |", "|---|---|---|"]
    lines += [f"| {s} | {e} | {t} |" for (s, e), t in STEP_MOVES.items()]
    return "\n".join(lines)
