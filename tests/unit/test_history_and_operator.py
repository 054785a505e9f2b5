"""The saga's history, and the operator's actions on it: retry, resolve, cancel."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saga_core.errors import TransitionRefused
from saga_store import SagaState, StepState, queries
from saga_store.models import Event, HistoryEvent
from saga_tools import timeline
from tests.harness import Harness
from tests.helpers import STOCK, available, make_order, service_records

OPERATOR = "operator:ada"
REFUND_FAILS = {
    "refund_payment": {"fail_transient": 99},
    "create_shipment": {"fail_business": True},
}


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def story(events: list[HistoryEvent]) -> list[tuple[str, str | None, str | None, str]]:
    return [(e.event.value, e.step, e.phase and e.phase.value, e.actor) for e in events]


def history(h: Harness, saga_id: str) -> list[HistoryEvent]:
    return queries.history(h.engine.db, saga_id)


def failed_saga(h: Harness) -> str:
    """A saga whose refund gives up: ``failed``, with an alert."""
    sid = h.submit(make_order("F"), faults=REFUND_FAILS)
    h.run_all()
    assert h.saga(sid).state is SagaState.FAILED
    return sid


def test_history_tells_a_compensated_saga_in_order(h: Harness) -> None:
    sid = h.submit(make_order("A"), faults={"create_shipment": {"fail_business": True}})
    h.run_all()
    assert story(history(h, sid)) == [
        ("created", None, None, "client"),
        ("started", None, None, "client"),
        ("dispatched", "reserve_inventory", "action", "client"),
        ("succeeded", "reserve_inventory", "action", "orchestrator"),
        ("dispatched", "charge_payment", "action", "orchestrator"),
        ("succeeded", "charge_payment", "action", "orchestrator"),
        ("dispatched", "create_shipment", "action", "orchestrator"),
        ("rejected", "create_shipment", "action", "orchestrator"),
        ("compensating", None, None, "orchestrator"),
        ("dispatched", "charge_payment", "compensation", "orchestrator"),
        ("succeeded", "charge_payment", "compensation", "orchestrator"),
        ("dispatched", "reserve_inventory", "compensation", "orchestrator"),
        ("succeeded", "reserve_inventory", "compensation", "orchestrator"),
        ("compensated", None, None, "orchestrator"),
    ]
    rejected = history(h, sid)[7]
    assert rejected.error == "create_shipment refused (fault plan)" and rejected.attempt == 1
    assert rejected.duration_ms == 0.0  # the harness's clock stands still


def test_history_records_redispatches_duplicates_and_restarts(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    h.clock.now += 0.25
    reserved = h.execute_next()
    h.engine.handle_outcome(reserved)
    h.engine.handle_outcome(reserved)  # delivered twice
    h.commands.clear()  # the charge command is lost
    h.clock.now += 31
    h.engine.sweep()
    h.clock.now += h.settings.liveness_timeout + 0.1
    h.restart().recover()  # the orchestrator restarts before the outcome
    events = history(h, sid)
    assert story(events)[3:] == [
        ("succeeded", "reserve_inventory", "action", "orchestrator"),
        ("dispatched", "charge_payment", "action", "orchestrator"),
        ("duplicate_ignored", "reserve_inventory", "action", "orchestrator"),
        ("redispatched", "charge_payment", "action", "sweeper"),
        ("resent", "charge_payment", "action", "recovery"),
    ]
    assert events[3].duration_ms == 250.0
    assert [e.attempt for e in events[-2:]] == [2, 2]


def test_history_is_append_only(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    for sql in ("UPDATE saga_events SET event = 'completed'", "DELETE FROM saga_events"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            h.engine.db.execute(sql)
    assert len(history(h, sid)) == 3


def test_a_failed_compensation_raises_an_alert_in_the_history(h: Harness) -> None:
    sid = failed_saga(h)
    events = history(h, sid)
    alert = next(e for e in events if e.event is Event.ALERT)
    assert alert.step == "charge_payment" and "(after 6 tries)" in (alert.error or "")
    assert events[-1].event is Event.FAILED
    assert [a.saga_id for a in queries.alerts(h.engine.db)] == [sid]


def test_retry_after_the_cause_is_fixed_ends_compensated(h: Harness) -> None:
    sid = failed_saga(h)
    assert h.engine.retry(sid, OPERATOR) is SagaState.COMPENSATING
    refund = h.commands[0]
    assert refund.operation == "refund_payment" and refund.attempt == 1  # a fresh budget
    h.plans.add("F", {})  # the cause is fixed
    h.run_all()
    view = h.saga(sid)
    assert view.state is SagaState.COMPENSATED
    assert view.step("charge_payment").state is StepState.COMPENSATED
    assert service_records(h.settings.data_dir, "F")["refunds"] == 1
    assert queries.alerts(h.engine.db) == []
    assert queries.alerts(h.engine.db, include_resolved=True)[0].resolution == "retried"
    retry = next(e for e in history(h, sid) if e.event is Event.RETRY)
    assert retry.actor == OPERATOR and retry.note == "charge_payment"


def test_retry_that_fails_again_raises_a_new_alert(h: Harness) -> None:
    sid = failed_saga(h)
    h.engine.retry(sid, OPERATOR)
    h.run_all()
    assert h.saga(sid).state is SagaState.FAILED
    assert len(queries.alerts(h.engine.db)) == 1
    assert len(queries.alerts(h.engine.db, include_resolved=True)) == 2


def test_resolve_closes_the_alert_and_keeps_the_saga_failed(h: Harness) -> None:
    sid = failed_saga(h)
    h.engine.resolve(sid, "refunded by hand in the card processor's console", OPERATOR)
    assert h.saga(sid).state is SagaState.FAILED
    assert queries.alerts(h.engine.db) == []
    resolved = history(h, sid)[-1]
    assert resolved.event is Event.RESOLVED and resolved.actor == OPERATOR
    assert "by hand" in timeline.describe(resolved)


def test_cancel_compensates_the_step_in_flight_and_those_done(h: Harness) -> None:
    sid = h.submit(make_order("C"))
    h.engine.handle_outcome(h.execute_next())  # reserved; the charge is in flight
    charge = h.commands.popleft()
    assert h.engine.cancel(sid, OPERATOR) is SagaState.COMPENSATING
    assert [c.operation for c in h.commands] == ["refund_payment"]
    h.run_all()
    h.commands.append(charge)  # the charge's action arrives after its refund
    assert h.engine.handle_outcome(h.execute_next()) is False
    view = h.saga(sid)
    assert view.state is SagaState.COMPENSATED and view.error == "cancelled by an operator"
    assert service_records(h.settings.data_dir, "C")["charges"] == 0
    assert available(h.settings.data_dir, "WIDGET") == STOCK["WIDGET"]
    assert story(history(h, sid))[-1] == (
        "duplicate_ignored",
        "charge_payment",
        "action",
        "orchestrator",
    )


def test_cancel_of_a_pending_saga_ends_it_at_once(h: Harness) -> None:
    from saga_store import transitions

    sid, _ = transitions.create_saga(
        h.engine.db, "p1", "order", {}, h.engine.definitions["order"].specs(30, 3), h.clock()
    )
    assert h.engine.cancel(sid, OPERATOR) is SagaState.COMPENSATED
    assert not h.commands


@pytest.mark.parametrize(
    ("action", "state", "message"),
    [
        ("retry", "completed", "retrying its compensations is not allowed from state 'completed'"),
        ("resolve", "completed", "resolving it: the saga has no open alert"),
        ("cancel", "completed", "cancelling the saga is not allowed from state 'completed'"),
        ("cancel", "failed", "cancelling the saga is not allowed from state 'failed'"),
        ("retry", "resolved", "retrying its compensations: the saga has no open alert"),
        ("resolve", "resolved", "resolving it: the saga has no open alert"),
    ],
)
def test_actions_refuse_where_they_do_not_apply(
    h: Harness, action: str, state: str, message: str
) -> None:
    if state == "completed":
        sid = h.submit(make_order("A"))
        h.run_all()
    else:
        sid = failed_saga(h)
        if state == "resolved":
            h.engine.resolve(sid, "settled", OPERATOR)
    before = (h.saga(sid), len(history(h, sid)))
    with pytest.raises(TransitionRefused) as refused:
        if action == "resolve":
            h.engine.resolve(sid, "again", OPERATOR)
        else:
            getattr(h.engine, action)(sid, OPERATOR)
    assert refused.value.message == message
    assert (h.saga(sid), len(history(h, sid))) == before  # nothing changed
    assert not h.commands


def test_resolve_needs_a_note(h: Harness) -> None:
    sid = failed_saga(h)
    with pytest.raises(TransitionRefused, match="needs a note"):
        h.engine.resolve(sid, "  ", OPERATOR)
    assert len(queries.alerts(h.engine.db)) == 1
