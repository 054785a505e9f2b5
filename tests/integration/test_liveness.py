"""Liveness: a killed worker's step is sent again as soon as it is missed, and never while
a live worker holds it or it waits in its queue. Real workers, real SIGKILLs and SIGSTOPs,
with the default liveness settings (a heartbeat a second, lost after three silent ones)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable

import pytest

from saga_core import broker
from saga_core.processes import children_of, wait_for
from saga_store import SagaState, open_reader, queries
from saga_store.models import Event
from saga_tools.cluster import Child, saga_command
from tests.helpers import ONE_OF_EACH, make_order, service_records
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

#: The default deadline: long enough that, where a step is sent again well before it, what
#: sent it was liveness.
DEFAULT_STEP_TIMEOUT = 30.0


def redispatches(system: System, saga_id: str) -> list[str]:
    """Why the sweeper sent a step of the saga again, once per re-dispatch."""
    history = queries.history(open_reader(system.settings.store()), saga_id)
    return [e.note or "" for e in history if e.event is Event.REDISPATCHED]


def charge_under_way(system: System, order_id: str, seconds: float) -> str:
    """Submit an order whose charge takes ``seconds``; returns its saga once the charge runs."""
    plan = {"charge_payment": {"delay_seconds": seconds}}
    saga_id = system.submit(make_order(order_id), faults=plan)
    system.wait_step_running("charge_payment", saga_id, "charge_payment")
    return saga_id


def held_by(system: System, saga_id: str, step: str) -> str | None:
    return queries.get_saga(open_reader(system.settings.store()), saga_id).step(step).held_by


def test_a_killed_workers_step_is_sent_again_once_it_is_missed(
    make_system: Callable[..., System],
) -> None:
    system = make_system(step_timeout=DEFAULT_STEP_TIMEOUT)
    # Given a charge under way, which the payment worker reports holding
    saga_id = charge_under_way(system, "L-1", 3)
    wait_for(
        lambda: (held_by(system, saga_id, "charge_payment") or "").startswith("payment-"),
        10,
        "the payment worker to report holding the charge",
    )
    listed = subprocess.run(
        saga_command("workers", "--json"),
        env={**os.environ, **system.settings.to_env()},
        capture_output=True,
        text=True,
        check=True,
    )
    workers = {tuple(w["services"]): w for w in json.loads(listed.stdout)}
    assert set(workers) == {("inventory",), ("payment",), ("shipping",), ("notification",)}
    assert all(w["alive"] for w in workers.values())
    assert workers[("payment",)]["holds"] == 1
    # When its worker is SIGKILLed and started again
    system.kill_and_wait(system.workers["payment"])
    system.workers["payment"].start()
    # Then the saga completes well before the step's deadline, with one charge
    view = system.wait(saga_id, timeout=DEFAULT_STEP_TIMEOUT - 10)
    assert view.state is SagaState.COMPLETED
    assert service_records(system.data_dir, "L-1") == ONE_OF_EACH
    if broker.is_amqp(system.settings.broker_url):
        # RabbitMQ gave the message back when the connection dropped: nothing was lost
        assert view.step("charge_payment").attempts == 1
    else:
        # Redis keeps it unacknowledged for 10 minutes: the orchestrator missed it
        notes = redispatches(system, saga_id)
        assert len(notes) == 1 and "stopped reporting it" in notes[0], notes


@pytest.mark.any_broker  # long: on Redis only (the paused-worker test covers both)
def test_a_long_step_on_a_live_worker_is_dispatched_once(
    make_system: Callable[..., System],
) -> None:
    system = make_system(step_timeout=8.0)
    # Given a charge that runs twice its deadline, five times the liveness timeout
    saga_id = charge_under_way(system, "L-2", 16)
    # Then, its worker alive all along, it is never sent again
    view = system.wait(saga_id, timeout=60)
    assert view.state is SagaState.COMPLETED
    assert view.step("charge_payment").attempts == 1
    assert redispatches(system, saga_id) == []
    assert system.counters().get("redispatches", 0) == 0
    assert service_records(system.data_dir, "L-2") == ONE_OF_EACH


def test_steps_waiting_in_their_queue_are_not_late(make_system: Callable[..., System]) -> None:
    system = make_system(step_timeout=4.0)
    # Given ten slow charges queued behind one payment worker, the last waiting three times
    # its deadline
    slow = {"charge_payment": {"delay_seconds": 1.5}}
    one = [{"sku": "WIDGET", "quantity": 1}]  # the stock holds ten
    ids = [system.submit(make_order(f"Q-{n}", items=one), faults=slow) for n in range(10)]
    # Then each is sent once, and every saga completes
    for saga_id in ids:
        view = system.wait(saga_id, timeout=90)
        assert view.state is SagaState.COMPLETED
        assert view.step("charge_payment").attempts == 1
    assert system.counters().get("redispatches", 0) == 0
    for n in range(10):
        assert service_records(system.data_dir, f"Q-{n}")["charges"] == 1


def test_a_paused_worker_keeps_its_step_from_running_twice_at_once(
    make_system: Callable[..., System],
) -> None:
    # (prefork: its main process, which beats, can pause while its pool child runs the step)
    # The charge is sent again every liveness timeout while its worker is silent, and the
    # second worker leaves each to the first: a budget of twenty dispatches outlasts the
    # 15 s charge on any machine (five could run out first where the second worker starts
    # fast: seen once, 0.2 s before the answer).
    system = make_system(step_timeout=DEFAULT_STEP_TIMEOUT, pool="prefork", max_dispatches=20)
    # Given a slow charge under way in the payment worker, and a second payment worker
    saga_id = charge_under_way(system, "L-3", 15)
    env = {**system.settings.to_env(), "PYTHONUNBUFFERED": "1"}
    logs = system.data_dir / "logs"
    argv = saga_command("worker", "payment", "--pool", "prefork")
    second = Child("worker payment 2", argv, env, logs / "p2.log")
    system.workers["payment-2"] = second  # stopped with the others
    second.start()
    wait_for(lambda: "ready" in second.log_text(), 60, "the second payment worker")
    first = system.workers["payment"]
    # When the first worker's main process (and its supervisor) pauses, its pool child
    # running on: its heartbeats stop, and the orchestrator sends the charge again, to the
    # second worker
    frozen = [first.pid, *children_of(first.pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: redispatches(system, saga_id), 20, "the charge to be sent again")
        wait_for(
            lambda: "another run of" in second.log_text(),
            20,
            "the second worker to find the charge under way",
        )
        # Then the first run answers for the step, and the charge is made once
        view = system.wait(saga_id, timeout=60)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert view.state is SagaState.COMPLETED
    assert service_records(system.data_dir, "L-3") == ONE_OF_EACH


def saga_ping(system: System, target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        saga_command("ping", target, "--timeout", str(timeout)),
        env={**os.environ, **system.settings.to_env()},
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def test_the_health_check_is_answered_through_each_queue_and_not_by_a_frozen_worker(
    system: System,
) -> None:
    system.wait_ready()
    for target in ("inventory", "payment", "shipping", "notification", "orchestrator"):
        answered = saga_ping(system, target, 10)
        assert answered.returncode == 0, answered.stderr
        expected = "orchestrator@" if target == "orchestrator" else f"{target}-"
        assert answered.stdout.startswith(f"pong from {expected}"), answered.stdout
    # A worker that is alive but takes nothing from its queue fails the check
    payment = system.workers["payment"]
    frozen_pids = [payment.pid, *children_of(payment.pid)]  # its supervisor and itself
    for pid in frozen_pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        frozen = saga_ping(system, "payment", 2)
    finally:
        for pid in frozen_pids:
            os.kill(pid, signal.SIGCONT)
    assert frozen.returncode == 1
    assert "no answer from queue" in frozen.stderr
