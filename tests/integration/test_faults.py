"""Faults beyond a clean crash: poison messages, bad messages, a broker that goes away,
a locked store, a data dir that cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from saga_core.celery_app import make_app
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.messages import OUTCOME_TASK, Command, Outcome, Phase, Status
from saga_core.processes import wait_for
from saga_core.retry import RetryPolicy
from saga_store import SagaState, StepState, open_reader, queries
from saga_tools import audit, redis_server
from saga_tools.cluster import saga_command
from tests.helpers import make_order, service_records, signed
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

FAST = RetryPolicy(max_retries=0)


def assert_clean(system: System) -> None:
    report = audit.audit(system.data_dir)
    assert report.ok, report.violations


def test_poison_step_is_given_up_and_the_saga_compensates(system: System) -> None:
    # Given a reservation whose worker dies every time it runs it
    saga_id = system.submit(
        make_order("P-1"), faults={"reserve_inventory": {"crash_before_effect": True}}
    )
    # Then it is given up after a bounded number of runs, and the saga compensates
    view = system.wait(saga_id, timeout=90)
    assert view.state is SagaState.COMPENSATED
    assert "died in each of its last 3 runs" in (view.step("reserve_inventory").error or "")
    assert system.workers["inventory"].alive()
    assert service_records(system.data_dir, "P-1")["reservations_held"] == 0
    assert_clean(system)
    # and the worker serves the next order
    assert system.wait(system.submit(make_order("P-2"))).state is SagaState.COMPLETED


def publish_raw(settings: Settings, queue: str, body: object, **options: object) -> None:
    name = settings.queue(queue)
    with Connection(settings.broker_url) as conn:
        conn.Producer().publish(
            body,
            exchange=name,
            routing_key=name,
            declare=[Queue(name, Exchange(name), routing_key=name)],
            headers={
                "task": options.pop("task", "charge_payment"),
                "id": str(uuid.uuid4()),
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
            **options,
        )


BAD: dict[str, object] = {"card": None}


def test_bad_messages_are_rejected_and_the_workers_keep_serving(system: System) -> None:
    settings = system.settings
    app = make_app(settings)
    for queue, task in (("payment", "charge_payment"), (ORCHESTRATOR_QUEUE, OUTCOME_TASK)):
        publish_raw(
            settings,
            queue,
            "{not json",
            content_type="application/json",
            content_encoding="utf-8",
            task=task,
        )
        publish_raw(settings, queue, [[], {"key": "k"}, {}], serializer="pickle", task=task)
    publish_raw(settings, "payment", [[], {}, {}], serializer="json", task="mine_bitcoin")
    payment_queue, orchestrator_queue = (
        settings.queue("payment"),
        settings.queue(ORCHESTRATOR_QUEUE),
    )
    # the commands of an older contract, and of a newer one
    app.send_task("charge_payment", kwargs={"key": "k", "payload": {}}, queue=payment_queue)
    unreadable = Command("charge_payment", "s-9", "charge_payment", Phase.ACTION, 1, {}, FAST)
    # (signed as the system signs: what is checked here is the contract, not who sent it)
    newer = signed(settings, unreadable.kind, {**unreadable.to_wire(), "v": 2}, "payment")
    app.send_task("charge_payment", args=[newer], queue=payment_queue)
    # a command of the right shape whose payload the service cannot read
    app.send_task(
        "charge_payment",
        args=[
            signed(settings, unreadable.kind, replace(unreadable, payload=BAD).to_wire(), "payment")
        ],
        queue=payment_queue,
    )
    sideways = signed(settings, "outcome", {"saga_id": "x", "phase": "sideways"}, "payment")
    app.send_task(OUTCOME_TASK, args=[sideways], queue=orchestrator_queue)
    outcome = Outcome("s-9", "charge_payment", Phase.ACTION, 1, Status.SUCCEEDED, 1)
    newer_outcome = signed(settings, "outcome", {**outcome.to_wire(), "v": 2}, "payment")
    app.send_task(OUTCOME_TASK, args=[newer_outcome], queue=orchestrator_queue)

    # every bad message is logged where it landed
    payment, orch = system.workers["payment"], system.orchestrator
    wait_for(
        lambda: (
            "content type 'application/x-python-serialize', not JSON" in payment.log_text()
            and "not JSON: Expecting property name" in payment.log_text()
            and "unknown task 'mine_bitcoin'" in payment.log_text()
            and "command: expected one argument" in payment.log_text()
            and "command: unknown version 2 (this process speaks 1)" in payment.log_text()
            and "charge_payment: malformed payload" in payment.log_text()
        ),
        30,
        "the payment worker to reject each bad message",
    )
    wait_for(
        lambda: (
            "Refusing to deserialize untrusted content" in orch.log_text()
            and "Expecting property name" in orch.log_text()
            and "saga.outcome: outcome: no version field" in orch.log_text()
            and "outcome: unknown version 2" in orch.log_text()
        ),
        30,
        "the orchestrator to reject each bad message",
    )
    # and nothing else was lost: a real order still goes through
    saga_id = system.submit(make_order("B-1"))
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert payment.alive() and orch.alive()
    assert service_records(system.data_dir, "B-1")["charges"] == 1


ONE = [{"sku": "WIDGET", "quantity": 1}]


def test_redis_restarted_mid_run_loses_nothing(
    make_system: Callable[..., System], own_redis: redis_server.OwnedRedis, redis_only: None
) -> None:
    system = make_system(broker_url=own_redis.url, step_timeout=3.0)
    # Given sagas in flight, one of them slow in the shipping worker
    slow = system.submit(
        make_order("R-0", items=ONE), faults={"create_shipment": {"delay_seconds": 2}}
    )
    others = [system.submit(make_order(f"R-{n}", items=ONE)) for n in range(1, 6)]
    system.wait_step_running("create_shipment", slow, "create_shipment")
    # When Redis dies, losing every queued message, and comes back a little later
    port = own_redis.port
    own_redis.stop(hard=True)
    # an order submitted meanwhile is stored, and waits for the broker
    more = [system.submit(make_order("R-6", items=ONE))]
    wait_for(  # an outage longer than one attempt to reconnect
        lambda: system.orchestrator.log_text().count("broker unreachable") >= 2,
        30,
        "the orchestrator to try reconnecting twice",
    )
    own_redis.start(port)
    more.append(system.submit(make_order("R-7", items=ONE)))
    # Then every saga ends, each effect once, and the orchestrator never stopped
    for saga_id in [slow, *others, *more]:
        assert system.wait(saga_id, timeout=120).state is SagaState.COMPLETED
    for n in range(8):
        assert service_records(system.data_dir, f"R-{n}")["charges"] == 1
    assert system.orchestrator.alive()
    assert_clean(system)


@pytest.mark.any_broker
def test_store_locked_by_another_process_for_a_while(system: System) -> None:
    # Given a saga under way
    saga_id = system.submit(make_order("L-1"), faults={"charge_payment": {"delay_seconds": 1}})
    system.wait_step_running("charge_payment", saga_id, "charge_payment")
    # When another process holds the store's write lock, longer than SQLite's busy timeout
    locked, release = system.data_dir / "locked", system.data_dir / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, time, pathlib\n"
                f"c = sqlite3.connect({str(system.data_dir / 'sagas.db')!r})\n"
                "c.isolation_level = None\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                f"pathlib.Path({str(locked)!r}).touch()\n"
                f"while not pathlib.Path({str(release)!r}).exists():\n"
                "    time.sleep(0.05)\n"
                "c.execute('COMMIT')\n"
            ),
        ]
    )
    try:
        wait_for(locked.exists, 10, "the lock to be taken")
        # Then the orchestrator meets the lock (the charge's outcome cannot be stored), says
        # so, and keeps trying
        wait_for(
            lambda: "store busy" in system.orchestrator.log_text(),
            30,
            "the orchestrator to meet the lock",
        )
        assert system.orchestrator.alive()
        store = open_reader(system.settings.store())
        assert queries.get_saga(store, saga_id).step("charge_payment").state is StepState.RUNNING
        release.touch()
        # and carries on once it is released
        assert system.wait(saga_id).state is SagaState.COMPLETED
    finally:
        release.touch()
        holder.wait(20)
    assert holder.returncode == 0
    assert service_records(system.data_dir, "L-1")["charges"] == 1


@pytest.mark.any_broker
@pytest.mark.parametrize("command", [["worker", "payment"], ["orchestrator"]])
def test_unwritable_data_dir_is_a_clear_error_at_start(
    settings: Settings, tmp_path: Path, command: list[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    env = {**os.environ, **settings.with_(data_dir=blocker / "data").to_env()}
    result = subprocess.run(
        saga_command(*command), env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot open database" in result.stderr and "SAGA_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.any_broker
def test_compensation_delivered_before_its_action(
    make_system: Callable[..., System], redis_only: None
) -> None:
    # Redis gives a dead worker's message back only after the visibility timeout; with one
    # dispatch allowed, the orchestrator gives the step up and compensates it first.
    system = make_system(
        step_timeout=1.5, max_dispatches=1, visibility_timeout=6.0, unacked_restore_interval=1.0
    )
    # Given a charge under way in the payment worker
    saga_id = system.submit(make_order("C-1"), faults={"charge_payment": {"delay_seconds": 1}})
    system.wait_step_running("charge_payment", saga_id, "charge_payment")
    # When that worker's main process dies, holding the charge message unacknowledged
    system.kill_and_wait(system.workers["payment"])
    system.workers["payment"].start()
    # Then the refund comes first, and the saga ends compensated
    view = system.wait(saga_id, timeout=60)
    assert view.state is SagaState.COMPENSATED
    # and when the charge message comes back, it is refused
    payment = system.workers["payment"]
    wait_for(
        lambda: "refused: this request was already compensated" in payment.log_text(),
        60,
        "the late charge to be delivered and refused",
    )
    assert service_records(system.data_dir, "C-1")["charges"] == 0
    assert_clean(system)
