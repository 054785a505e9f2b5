"""The order saga end to end: real worker and orchestrator processes on a real Redis,
real SQLite files, real SIGKILLs."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from collections.abc import Callable

import pytest

import saga_app
from saga_core import broker
from saga_core.celery_app import make_app
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.messages import OUTCOME_TASK, SUBMIT_TASK, Command, Outcome, Phase, Status
from saga_core.processes import children_of, leaves, wait_for
from saga_core.retry import RetryPolicy
from saga_core.signing import CLIENT
from saga_faults.switch import FailureRates
from saga_store import SagaState, StepState, open_reader, open_store, queries
from saga_tools import audit
from tests.helpers import (
    DECLINED_CARD,
    ONE_OF_EACH,
    STOCK,
    all_text_of,
    assert_declined_and_undone,
    available,
    declared_queue_type,
    declared_queues,
    make_order,
    service_records,
    signed,
)
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

NOTHING_LIVE = {"reservations_held": 0, "charges_live": 0, "shipments_live": 0}


def live(records: dict[str, int]) -> dict[str, int]:
    return {k: records[k] for k in NOTHING_LIVE}


def test_full_success_path(system: System) -> None:
    saga_id = saga_app.run(make_order("A-1"), settings=system.settings, timeout=60)
    view = saga_app.get_saga(saga_id, settings=system.settings)
    assert view.state is SagaState.COMPLETED
    assert [s.state for s in view.steps] == [StepState.COMPLETED] * 4
    assert service_records(system.data_dir, "A-1") == ONE_OF_EACH
    assert available(system.data_dir, "WIDGET") == STOCK["WIDGET"] - 2
    # each step ran in its own service's worker
    assert "charge_payment" in system.workers["payment"].log_text()
    assert "charge_payment" not in system.workers["inventory"].log_text()
    # no full card number anywhere: not in the store, the services' files or any log
    assert "4242424242424242" not in all_text_of(system.data_dir)


def test_payment_failure_triggers_compensation(system: System) -> None:
    saga_id = system.submit(make_order("A-2", card_number=DECLINED_CARD))
    assert_declined_and_undone(system.wait(saga_id), system.data_dir, "A-2")


def test_crash_recovery_resumes_saga(system: System) -> None:
    # Given a saga whose shipment step is under way
    saga_id = system.submit(make_order("A-3"), faults={"create_shipment": {"delay_seconds": 1}})
    system.wait_step_running("create_shipment", saga_id, "create_shipment")
    # When the orchestrator is SIGKILLed and started again
    system.kill_and_wait(system.orchestrator)
    system.orchestrator.start()
    # Then the saga completes with every effect exactly once
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "A-3") == ONE_OF_EACH


@pytest.mark.parametrize(
    ("crash_at", "card", "final", "records"),
    [
        ("before_dispatch:charge_payment", "4242424242424242", SagaState.COMPLETED, ONE_OF_EACH),
        ("after_dispatch:create_shipment", "4242424242424242", SagaState.COMPLETED, ONE_OF_EACH),
        (
            "before_dispatch:release_inventory",
            "4000000000000002",
            SagaState.COMPENSATED,
            {
                **ONE_OF_EACH,
                "reservations_held": 0,
                "reservations_released": 1,
                "charges": 0,
                "charges_live": 0,
                "shipments": 0,
                "shipments_live": 0,
                "confirmations": 0,
            },
        ),
    ],
)
def test_orchestrator_crash_points(
    make_system: Callable[..., System],
    crash_at: str,
    card: str,
    final: SagaState,
    records: dict[str, int],
) -> None:
    system = make_system(step_timeout=5.0)
    saga_id = system.submit(
        make_order("A-4", card_number=card), faults={"orchestrator": {"crash_at": crash_at}}
    )
    wait_for(
        lambda: not system.orchestrator.alive(), 30, f"the orchestrator to crash at {crash_at}"
    )
    # it died at the named point, by the plan, not anywhere else
    assert f"crashing at {crash_at} for saga {saga_id}" in system.orchestrator.log_text()
    point, operation = crash_at.split(":")
    assert (system.data_dir / "crashpoints" / f"{saga_id}.{point}.{operation}").exists()
    system.orchestrator.stop()
    system.orchestrator.start()
    assert system.wait(saga_id).state is final
    assert service_records(system.data_dir, "A-4") == records
    assert audit.audit(system.data_dir).ok


def test_worker_dies_after_the_effect_before_replying(system: System) -> None:
    # The pool child kills itself right after the shipment is committed; the message is
    # redelivered, the ledger returns the first result, and the reply goes out.
    saga_id = system.submit(
        make_order("A-6"), faults={"create_shipment": {"crash_after_effect": True}}
    )
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "A-6") == ONE_OF_EACH
    assert "crashing after the effect" in system.workers["shipping"].log_text()


def test_a_worker_killed_from_outside_between_its_commit_and_its_reply(system: System) -> None:
    # Given a charge whose effect is committed and whose outcome is not sent yet: the step
    # touches a marker after its commit and holds there (no other fault anywhere)
    saga_id = system.submit(
        make_order("A-16"), faults={"charge_payment": {"pause_after_effect": 5}}
    )
    committed = system.data_dir / "committed" / f"charge_payment.{saga_id}:charge_payment"
    wait_for(committed.exists, 30, "the charge to be committed")
    assert service_records(system.data_dir, "A-16")["charges"] == 1
    step = system.saga(saga_id).step("charge_payment")
    assert step.state is StepState.RUNNING  # the orchestrator has heard nothing yet
    # When the worker's process is SIGKILLed from outside, in that window
    worker = system.workers["payment"]
    [process] = leaves(worker.pid)
    os.kill(process, signal.SIGKILL)
    # Then the charge is delivered again, the ledger answers with the first result, and the
    # saga completes with one charge and a clean audit
    assert system.wait(saga_id).state is SagaState.COMPLETED
    # (its supervisor saw it killed: `saga worker` on the solo pool, Celery on prefork)
    assert "SIGKILL" in worker.log_text() and process not in leaves(worker.pid)
    assert service_records(system.data_dir, "A-16") == ONE_OF_EACH
    report = audit.audit(system.data_dir)
    assert report.ok, report.violations


@pytest.mark.any_broker
def test_compensation_that_keeps_failing_alerts(system: System) -> None:
    saga_id = system.submit(
        make_order("A-7"),
        faults={
            "create_shipment": {"fail_business": True},
            "refund_payment": {"fail_transient": 100},
        },
    )
    view = system.wait(saga_id)
    assert view.state is SagaState.FAILED
    assert view.step("charge_payment").state is StepState.FAILED
    assert "compensation failed" in (view.step("charge_payment").error or "")
    # the other compensation still ran
    assert view.step("reserve_inventory").state is StepState.COMPENSATED
    assert available(system.data_dir, "WIDGET") == STOCK["WIDGET"]
    [alert] = queries.alerts(open_store(system.settings.store()))
    assert (alert.saga_id, alert.step) == (saga_id, "charge_payment")
    log = system.orchestrator.log_text()
    assert (
        f"CRITICAL saga.alert: compensation of step charge_payment failed for good in saga "
        f"{saga_id}" in log
    )


@pytest.mark.any_broker
def test_email_failing_still_completes(system: System) -> None:
    saga_id = system.submit(make_order("A-8"), faults={"send_confirmation": {"fail_transient": 50}})
    view = system.wait(saga_id)
    assert view.state is SagaState.COMPLETED
    assert view.step("send_confirmation").state is StepState.FAILED
    assert service_records(system.data_dir, "A-8") == {**ONE_OF_EACH, "confirmations": 0}
    assert "best-effort step send_confirmation" in system.orchestrator.log_text()


def test_transient_failures_are_retried(system: System) -> None:
    saga_id = system.submit(make_order("A-9"), faults={"charge_payment": {"fail_transient": 2}})
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "A-9") == ONE_OF_EACH


@pytest.mark.any_broker
def test_same_order_id_twice_starts_one_saga(system: System) -> None:
    first = system.submit(make_order("A-10"))
    second = system.submit(make_order("A-10"))
    assert first == second
    system.wait(first)
    assert service_records(system.data_dir, "A-10") == ONE_OF_EACH


def test_a_producer_can_submit_through_the_orchestrator_queue(system: System) -> None:
    app = make_app(system.settings)
    order = signed(system.settings, "submission", make_order("A-14"), CLIENT)
    app.send_task(SUBMIT_TASK, args=[order], queue=system.settings.queue(ORCHESTRATOR_QUEUE))
    store = open_store(system.settings.store())
    row = wait_for(
        lambda: store.execute(
            "SELECT id FROM sagas WHERE idempotency_key = 'order:A-14'"
        ).fetchone(),
        30,
        "the submitted saga to be stored",
    )
    view = system.wait(row[0])
    assert view.state is SagaState.COMPLETED
    assert "sig" not in view.input  # the signature is the envelope's, not the order's
    assert service_records(system.data_dir, "A-14") == ONE_OF_EACH


def test_duplicate_outcome_over_the_broker_changes_nothing(system: System) -> None:
    saga_id = system.submit(make_order("A-11"))
    before = system.wait(saga_id)
    app = make_app(system.settings)
    outcome = Outcome(
        saga_id, "charge_payment", Phase.ACTION, 1, Status.SUCCEEDED, 1, {"charge_id": "ch_x"}
    )
    wire = signed(system.settings, "outcome", outcome.to_wire(), "payment")
    app.send_task(OUTCOME_TASK, args=[wire], queue=system.settings.queue(ORCHESTRATOR_QUEUE))
    wait_for(
        lambda: system.counters().get("duplicate_outcomes", 0) >= 1,
        20,
        "the duplicate outcome to be handled",
    )
    assert system.wait(saga_id) == before
    assert service_records(system.data_dir, "A-11") == ONE_OF_EACH


@pytest.mark.any_broker
def test_compensation_before_its_action_blocks_the_action(system: System) -> None:
    app = make_app(system.settings)
    payload = {
        "reference": "A-12",
        "card": {"token": "tok_visa", "last4": "4242"},
        "amount_cents": 100,
        "currency": "EUR",
    }
    queue = system.settings.queue("payment")
    for operation, phase in (
        ("refund_payment", Phase.COMPENSATION),
        ("charge_payment", Phase.ACTION),
    ):
        command = Command(operation, "k", "charge_payment", phase, 1, payload, RetryPolicy())
        wire = signed(system.settings, command.kind, command.to_wire(), "payment")
        app.send_task(operation, args=[wire], queue=queue)

    def action_refused() -> bool:
        conn = sqlite3.connect(system.data_dir / "payment.db")
        try:
            row = conn.execute(
                "SELECT action_status FROM idempotency WHERE key = 'k:charge_payment'"
            ).fetchone()
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
        return row is not None and row[0] == "blocked"

    wait_for(action_refused, 30, "the late charge to be refused")
    assert service_records(system.data_dir, "A-12")["charges"] == 0


def reservation_under_way(system: System, order_id: str) -> tuple[str, int]:
    """A slow reservation for ``order_id`` running in the inventory worker: its saga, and
    the PID of the process that runs it (prefork: the pool child; solo: the Celery
    process under `saga worker`)."""
    saga_id = system.submit(
        make_order(order_id), faults={"reserve_inventory": {"delay_seconds": 1}}
    )
    system.wait_step_running("reserve_inventory", saga_id, "reserve_inventory")
    [child] = leaves(system.workers["inventory"].pid)
    return saga_id, child


def test_pool_child_sigkill_redelivers_to_the_same_worker(
    make_system: Callable[..., System],
) -> None:
    system = make_system(pool="prefork")
    # Given a reservation under way in a prefork inventory worker's pool child
    saga_id, child = reservation_under_way(system, "A-13")
    worker = system.workers["inventory"]
    running = system.data_dir / "running" / f"reserve_inventory.{saga_id}:reserve_inventory"
    running.unlink()  # the slow step touches it again on each run
    # When the child is SIGKILLed, the main process sees the worker lost and requeues
    os.kill(child, signal.SIGKILL)
    # Then the same message is delivered again (long before the orchestrator would send the
    # step again: one dispatch), the saga completes, and the reservation is made once
    wait_for(running.exists, 30, "the reservation to run again")
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert system.wait(saga_id).step("reserve_inventory").attempts == 1
    assert worker.alive()
    assert child not in leaves(worker.pid)
    assert service_records(system.data_dir, "A-13") == ONE_OF_EACH


def test_a_worker_killed_mid_step_is_started_again_by_its_supervisor(
    make_system: Callable[..., System],
) -> None:
    system = make_system(pool="solo")  # (the default on Redis)
    # Given a reservation under way in the inventory worker: a solo-pool Celery process,
    # run by `saga worker` as its supervisor
    saga_id, process = reservation_under_way(system, "A-14")
    worker = system.workers["inventory"]
    # When that process is SIGKILLed (an out-of-memory kill, say)
    os.kill(process, signal.SIGKILL)
    # Then the supervisor starts a new one, the step is sent again, and the saga completes
    # with the reservation made once
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert worker.alive()
    assert process not in children_of(worker.pid)
    assert f"(pid {process}) was killed by SIGKILL" in worker.log_text()
    assert service_records(system.data_dir, "A-14") == ONE_OF_EACH


@pytest.mark.any_broker
def test_random_failures_leave_every_order_consistent(make_system: Callable[..., System]) -> None:
    rates = {"*": FailureRates(transient=0.3, business=0.05)}
    system = make_system(failure_rates=rates, step_timeout=10.0)
    ids = {
        f"R-{n}": system.submit(make_order(f"R-{n}", items=[{"sku": "WIDGET", "quantity": 1}]))
        for n in range(12)
    }
    final = {order_id: system.wait(saga_id, timeout=90) for order_id, saga_id in ids.items()}
    for order_id, view in final.items():
        records = service_records(system.data_dir, order_id)
        if view.state is SagaState.COMPLETED:
            assert {
                k: records[k] for k in ("reservations_held", "charges_live", "shipments_live")
            } == {"reservations_held": 1, "charges_live": 1, "shipments_live": 1}, order_id
        else:
            assert view.state in (SagaState.COMPENSATED, SagaState.FAILED), order_id
            assert live(records) == NOTHING_LIVE or view.state is SagaState.FAILED, order_id
        assert records["charges"] <= 1 and records["shipments"] <= 1, order_id
    held = sum(v.state is SagaState.COMPLETED for v in final.values())
    assert available(system.data_dir, "WIDGET") == STOCK["WIDGET"] - held
    report = audit.audit(system.data_dir)
    assert report.ok, report.violations


def test_lost_command_is_sent_again_after_its_deadline(make_system: Callable[..., System]) -> None:
    system = make_system(step_timeout=3.0)
    # Given a charge command waiting on a queue nobody serves
    system.kill_and_wait(system.workers["payment"])
    saga_id = system.submit(make_order("A-15"))
    queue = system.settings.queue("payment")
    wait_for(
        lambda: broker.queue_depths(system.settings.broker_url, [queue])[queue] == 1,
        30,
        "the charge command to be queued",
    )
    # When the message is lost
    broker.purge(system.settings.broker_url, [queue])
    system.workers["payment"].start()
    # Then the sweeper sends it again and the saga completes
    view = system.wait(saga_id, timeout=60)
    assert view.state is SagaState.COMPLETED
    assert view.step("charge_payment").attempts >= 2
    assert service_records(system.data_dir, "A-15") == ONE_OF_EACH


def test_quorum_queues(
    make_system: Callable[..., System], settings: Settings, rabbitmq_only: None
) -> None:
    # what an earlier version's workers declared for Celery's native delayed delivery
    delayed = [f"celery_delayed_{level}" for level in range(28)]
    broker.discard(settings.broker_url, delayed)
    system = make_system(quorum_queues=True)
    ok = system.submit(make_order("Q-1"))
    declined = system.submit(make_order("Q-2", card_number="4000000000000002"))
    retried = system.submit(make_order("Q-3"), faults={"charge_payment": {"fail_transient": 1}})
    assert system.wait(ok).state is SagaState.COMPLETED
    assert system.wait(declined).state is SagaState.COMPENSATED
    # a retry's countdown, held in the worker: quorum queues have no delay of their own
    assert system.wait(retried).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "Q-3") == ONE_OF_EACH
    # and RabbitMQ holds every queue of the system as a quorum queue, and no other: the
    # workers set up none of native delayed delivery's 28 levels, which no queue here uses
    queues = system.settings.all_queues()
    types = {q: declared_queue_type(system.settings.broker_url, q) for q in queues}
    assert set(types.values()) == {"quorum"}, types
    assert declared_queues(system.settings.broker_url, delayed) == []


def test_a_store_made_again_under_the_same_path_is_the_one_submits_reach(
    settings: Settings,
) -> None:
    """A script that starts a system afresh in the same data directory, in the same
    process, submits to the new store, not to the removed one its last engine still had
    open."""
    first = saga_app.submit(make_order("A-20"), settings=settings)
    shutil.rmtree(settings.data_dir)
    second = saga_app.submit(make_order("A-21"), settings=settings)
    store = open_reader(settings.store())
    try:
        assert queries.saga_exists(store, second)
        assert not queries.saga_exists(store, first)
    finally:
        store.close()
