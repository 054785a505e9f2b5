"""The engine against real SQLite stores and the real service code, with commands run
synchronously one at a time (no broker): the state machine's stories, in milliseconds."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from orchestrator.definition import SagaDefinition
from order_app.order import InvalidOrder
from saga_core.config import Settings
from saga_core.database import transaction
from saga_core.messages import Heartbeat, Held, Phase, Status
from saga_store import SagaState, StepState, queries
from tests.harness import Harness
from tests.helpers import DEFINITIONS, ONE_OF_EACH, STOCK, available, make_order, service_records


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_success_path(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    assert h.run_all() == [
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "send_confirmation",
    ]
    view = h.saga(sid)
    assert view.state is SagaState.COMPLETED
    assert all(s.state is StepState.COMPLETED for s in view.steps)
    assert service_records(h.settings.data_dir, "A") == ONE_OF_EACH


def test_declined_card_releases_the_reservation(h: Harness) -> None:
    sid = h.submit(make_order("A", card_number="4000000000000002"))
    assert h.run_all() == ["reserve_inventory", "charge_payment", "release_inventory"]
    view = h.saga(sid)
    assert view.state is SagaState.COMPENSATED
    assert view.step("charge_payment").state is StepState.FAILED
    assert view.step("reserve_inventory").state is StepState.COMPENSATED
    assert available(h.settings.data_dir, "WIDGET") == STOCK["WIDGET"]
    assert service_records(h.settings.data_dir, "A")["charges_live"] == 0


def test_compensations_run_one_at_a_time_last_first(h: Harness) -> None:
    h.submit(
        make_order("A"),
        faults={"send_confirmation": {}, "create_shipment": {"fail_business": True}},
    )
    assert h.run_all()[3:] == ["refund_payment", "release_inventory"]


def test_duplicate_outcome_changes_nothing(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    outcome = h.execute_next()
    assert h.engine.handle_outcome(outcome) is True
    before = h.saga(sid)
    assert h.engine.handle_outcome(outcome) is False
    assert h.saga(sid) == before
    assert len(h.commands) == 1  # the duplicate dispatched nothing
    assert queries.counters(h.engine.db)["duplicate_outcomes"] == 1


def test_a_batch_of_outcomes_applies_each_and_ignores_duplicates(h: Harness) -> None:
    a, b = h.submit(make_order("A")), h.submit(make_order("B"))
    done_a, done_b = h.execute_next(), h.execute_next()
    assert h.engine.handle_outcomes([done_a, done_b, done_a]) == 2
    assert [c.saga_id for c in h.commands] == [a, b]  # both moved on
    assert h.saga(a).step("charge_payment").state is StepState.RUNNING
    assert queries.counters(h.engine.db)["duplicate_outcomes"] == 1


def test_late_outcome_of_a_given_up_step_changes_nothing(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    sid = h.submit(make_order("A"))
    h.engine.handle_outcome(h.execute_next())  # reserved; the charge command is lost:
    h.commands.clear()
    with caplog.at_level(logging.WARNING, logger="saga.orchestrator"):
        for _ in range(3):  # each deadline passes with no outcome; the third gives it up
            h.clock.now += 31
            h.engine.sweep()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == (
        f"action of {sid}/charge_payment lost (no outcome by its deadline): "
        "sending it again (attempt 2)"
    )
    assert said[-1] == (
        f"gave up {sid}/charge_payment: lost (no outcome by its deadline) once too often"
    )
    tasks = [c.operation for c in h.commands]
    assert tasks == ["charge_payment", "charge_payment", "refund_payment"]
    h.commands.popleft()
    late = h.execute_next()  # a slow delivery of the charge finally replies
    assert h.engine.handle_outcome(late) is False
    h.run_all()
    view = h.saga(sid)
    assert view.state is SagaState.COMPENSATED
    assert view.step("charge_payment").error == (
        "no outcome after 3 dispatches (no outcome by its deadline)"
    )
    records = service_records(h.settings.data_dir, "A")
    assert records["charges_live"] == 0 and records["reservations_held"] == 0


def test_compensation_that_arrives_first_blocks_the_late_action(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    h.engine.handle_outcome(h.execute_next())
    stuck = h.commands.popleft()  # a charge delivery that is stuck somewhere
    for _ in range(3):
        h.clock.now += 31
        h.engine.sweep()
        if h.commands and h.commands[-1].operation == "charge_payment":
            h.commands.pop()
    h.run_all()  # refund (of nothing) and release
    h.commands.append(stuck)
    assert h.execute_next().status is Status.REJECTED
    assert h.saga(sid).state is SagaState.COMPENSATED
    assert service_records(h.settings.data_dir, "A")["charges"] == 0


def test_same_order_id_starts_one_saga(h: Harness) -> None:
    first = h.submit(make_order("A"))
    again = h.submit(make_order("A"))
    assert first == again and len(h.commands) == 1


def test_invalid_order_stores_nothing(h: Harness) -> None:
    with pytest.raises(InvalidOrder, match="amount_cents"):
        h.submit(make_order("A", amount_cents=-5))
    assert h.engine.db.execute("SELECT COUNT(*) FROM sagas").fetchone()[0] == 0
    assert not h.commands


def test_recovery_resends_lost_commands(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    h.engine.handle_outcome(h.execute_next())
    h.commands.clear()  # the orchestrator died before publishing the next command
    h.restart()
    assert h.engine.recover() == 0  # just sent: for all it knows, a worker has it
    h.clock.now += h.settings.liveness_timeout + 0.1
    assert h.engine.recover() == 1
    h.run_all()
    assert h.saga(sid).state is SagaState.COMPLETED
    assert service_records(h.settings.data_dir, "A")["charges"] == 1


def test_orchestrators_that_recover_together_resend_each_command_once(h: Harness) -> None:
    sids = [h.submit(make_order(c)) for c in "ABC"]
    h.commands.clear()  # every first command lost
    h.clock.now += h.settings.liveness_timeout + 0.1
    engines = [h.restart() for _ in range(3)]  # three orchestrators on one store
    assert [e.recover() for e in engines] == [3, 0, 0]
    assert sorted(c.saga_id for c in h.commands) == sorted(sids)
    h.run_all()
    assert {h.saga(s).state for s in sids} == {SagaState.COMPLETED}


def test_email_failing_still_completes(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    sid = h.submit(make_order("A"), faults={"send_confirmation": {"fail_transient": 9}})
    with caplog.at_level(logging.WARNING, logger="saga.orchestrator"):
        h.run_all()
    view = h.saga(sid)
    assert view.state is SagaState.COMPLETED
    assert view.step("send_confirmation").state is StepState.FAILED
    assert any("best-effort" in r.message for r in caplog.records)


def test_compensation_that_keeps_failing_alerts(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    sid = h.submit(
        make_order("A"),
        faults={
            "create_shipment": {"fail_business": True},
            "refund_payment": {"fail_transient": 99},
        },
    )
    with caplog.at_level(logging.CRITICAL, logger="saga.alert"):
        h.run_all()
    view = h.saga(sid)
    assert view.state is SagaState.FAILED
    assert view.step("reserve_inventory").state is StepState.COMPENSATED  # still ran
    [alert] = queries.alerts(h.engine.db)
    assert (alert.saga_id, alert.step) == (sid, "charge_payment")
    [record] = [r for r in caplog.records if r.name == "saga.alert"]
    assert record.levelno == logging.CRITICAL and sid in record.getMessage()


def test_saga_left_pending_by_a_dead_submitter_is_started(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    h.commands.clear()
    h.engine.db.execute("UPDATE sagas SET state = 'pending' WHERE id = ?", (sid,))
    h.engine.db.execute(
        "UPDATE saga_steps SET state = 'pending', attempts = 0, "
        "deadline_at = NULL WHERE saga_id = ?",
        (sid,),
    )
    h.engine.sweep()
    assert not h.commands  # too young: its submitter may still be dispatching
    h.clock.now += 31
    h.engine.sweep()
    h.run_all()
    assert h.saga(sid).state is SagaState.COMPLETED


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([{"sku": "NOPE", "quantity": 1}], "unknown SKU 'NOPE'"),
        ([{"sku": "GADGET", "quantity": 6}], "out of stock: 'GADGET' has 5, 6 requested"),
        ([{"sku": "WIDGET", "quantity": 1}, {"sku": "GADGET", "quantity": 9}], "out of stock"),
    ],
)
def test_reservation_refused_compensates_with_nothing_held(
    h: Harness, items: list[Any], error: str
) -> None:
    sid = h.submit(make_order("A", items=items))
    h.run_all()
    view = h.saga(sid)
    assert view.state is SagaState.COMPENSATED
    assert error in (view.step("reserve_inventory").error or "")
    assert available(h.settings.data_dir, "WIDGET") == STOCK["WIDGET"]
    assert available(h.settings.data_dir, "GADGET") == STOCK["GADGET"]


def test_sweeps_hold_off_while_outcomes_queue(tmp_path: Path) -> None:
    from orchestrator.process import Orchestrator

    o = Orchestrator(Settings(data_dir=tmp_path, sweep_interval=1), DEFINITIONS, batch_size=10)
    assert o.sweep_due(last_batch=3, now=100.0)
    assert not o.sweep_due(last_batch=3, now=100.5)  # once per interval
    assert not o.sweep_due(last_batch=10, now=101.0)  # a full batch: outcomes are queued
    assert o.sweep_due(last_batch=0, now=101.0)


# --- liveness: a step is lost when nothing is heard of it while its queue stands empty ------


def charge_in_flight(h: Harness, order_id: str) -> str:
    """A saga whose charge command is out (and taken off the harness's list)."""
    sid = h.submit(make_order(order_id))
    h.engine.handle_outcome(h.execute_next())
    assert h.commands.popleft().operation == "charge_payment"
    return sid


def holding(sid: str, step: str = "charge_payment") -> Heartbeat:
    return Heartbeat("payment@x", 7, ("payment",), 1.0, (Held(sid, step, Phase.ACTION, 1),))


def test_a_step_a_live_worker_holds_is_never_sent_again(h: Harness) -> None:
    sid = charge_in_flight(h, "A")
    # a worker reports holding the charge every second, for twice its deadline
    for _ in range(60):
        h.clock.now += 1
        h.engine.handle_heartbeats([holding(sid)])
        h.engine.sweep()
    assert not h.commands
    assert h.saga(sid).step("charge_payment").held_by == "payment@x pid 7"
    # its heartbeats stop listing it (the worker died): lost once the liveness timeout passes
    h.engine.handle_heartbeats([holding("another saga")])
    h.clock.now += h.settings.liveness_timeout - 0.5
    h.engine.sweep()
    assert not h.commands
    h.clock.now += 1
    h.engine.sweep()
    assert [(c.operation, c.attempt) for c in h.commands] == [("charge_payment", 2)]
    note = queries.history(h.engine.db, sid)[-1].note
    assert note == "payment@x pid 7 stopped reporting it"


def test_a_step_nobody_took_from_an_empty_queue_is_lost(h: Harness) -> None:
    sid = charge_in_flight(h, "A")
    h.engine.handle_heartbeats([holding("another saga")])  # the payment worker is alive
    h.clock.now += h.settings.liveness_timeout + 0.5
    h.engine.sweep()
    assert [c.attempt for c in h.commands] == [2]
    assert queries.history(h.engine.db, sid)[-1].note == (
        "no worker reported taking it, and its queue is empty"
    )


def test_a_step_waiting_in_its_queue_is_not_late(h: Harness) -> None:
    waiting = {"payment": 3}
    h.restart(queue_depth=lambda service: waiting.get(service, 0))
    sid = charge_in_flight(h, "A")
    # the queue holds messages for three times the deadline: nothing is sent again
    for _ in range(90):
        h.clock.now += 1
        h.engine.sweep()
    assert not h.commands
    # once the queue is seen empty, a worker that took the charge has a heartbeat and a
    # half to report it; none does, so the charge is found lost
    waiting["payment"] = 0
    h.clock.now += 1
    h.engine.sweep()
    h.clock.now += 1
    h.engine.sweep()
    assert not h.commands
    h.clock.now += 1
    h.engine.sweep()
    assert [c.attempt for c in h.commands] == [2]
    assert h.saga(sid).state is SagaState.RUNNING


def test_a_lost_step_is_found_while_its_queue_is_busy_but_not_backlogged(h: Harness) -> None:
    # the payment queue holds messages at most looks, empty at one in three
    looks = iter([1, 2, 0] * 100)
    h.restart(queue_depth=lambda service: next(looks) if service == "payment" else 0)
    sid = charge_in_flight(h, "A")
    h.engine.handle_heartbeats([holding("another saga")])  # the payment worker is alive
    for _ in range(6):
        h.clock.now += 1
        h.engine.sweep()
    assert [c.attempt for c in h.commands] == [2]
    assert h.saga(sid).state is SagaState.RUNNING


def test_without_heartbeats_the_deadline_decides(h: Harness) -> None:
    charge_in_flight(h, "A")  # no worker of the payment service ever heartbeats
    h.clock.now += h.settings.step_timeout - 1
    h.engine.sweep()
    assert not h.commands
    h.clock.now += 2
    h.engine.sweep()
    assert [c.attempt for c in h.commands] == [2]


def test_steps_waiting_for_a_service_with_no_live_worker_are_reported(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.restart(queue_depth=lambda service: 1 if service == "payment" else 0)
    charge_in_flight(h, "A")
    h.engine.handle_heartbeats([holding("another saga")])
    with caplog.at_level(logging.WARNING, logger="saga.orchestrator"):
        for _ in range(120):  # two minutes with no payment worker heard from
            h.clock.now += 1
            h.engine.sweep()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "1 step(s) wait for payment, and none of its workers has been heard from for 3s",
        "1 step(s) wait for payment, and none of its workers has been heard from for 63s",
    ]
    assert not h.commands  # waiting, not lost


def _without_confirmation(definition: SagaDefinition) -> SagaDefinition:
    """The order saga's definition, changed: no confirmation step (another version)."""
    return dataclasses.replace(definition, steps=definition.steps[:-1])


def test_a_saga_in_flight_on_a_version_the_app_lacks_is_left_as_it_was(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    old = DEFINITIONS["order"]
    sid = h.submit(make_order("A"))
    outcome = h.execute_next()  # the reservation took effect; its outcome is on its way
    new = {"order": _without_confirmation(old)}
    assert new["order"].version != old.version
    h.restart(definitions=new)  # the app deployed again with the saga changed

    with caplog.at_level(logging.ERROR):
        assert h.engine.handle_outcome(outcome) is False
    assert h.saga(sid).step("reserve_inventory").state is StepState.RUNNING
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"version {old.version}" in m and "lacks" in m for m in said), said
    h.clock.now += h.settings.step_timeout + h.settings.liveness_timeout
    assert h.engine.recover() == 0 and h.engine.sweep() == 0 and not h.commands
    assert h.saga(sid).state is SagaState.RUNNING

    # a new saga starts on the new version, and the old one ends on its own once the app
    # keeps its definition as retired
    h.restart(definitions=new, retired=[old])
    assert h.engine.handle_outcome(outcome) is True
    h.run_all()
    assert h.saga(sid).state is SagaState.COMPLETED
    assert h.saga(sid).step("send_confirmation").state is StepState.COMPLETED
    later = h.submit(make_order("B"))
    h.run_all()
    assert [s.name for s in h.saga(later).steps] == [s.name for s in new["order"].steps]
    assert h.saga(later).state is SagaState.COMPLETED


def test_a_saga_stored_before_versions_runs_on_its_current_definition(h: Harness) -> None:
    sid = h.submit(make_order("A"))
    with transaction(h.engine.db):
        h.engine.db.execute("UPDATE sagas SET definition = 'order' WHERE id = ?", (sid,))
    h.run_all()
    assert h.saga(sid).state is SagaState.COMPLETED
