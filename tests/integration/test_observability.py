"""What an operator watches: JSON log lines with the saga's context, and Celery task events
(what Flower and ``celery events`` show)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from saga_core.celery_app import make_app
from saga_store import SagaState
from tests.helpers import make_order
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

DECLINED = "4000000000000002"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.any_broker
def test_json_logs_carry_the_saga_step_and_attempt(make_system: Callable[..., System]) -> None:
    system = make_system(log_format="json")
    saga_id = system.submit(make_order("J-1", card_number=DECLINED))
    assert system.wait(saga_id).state is SagaState.COMPENSATED

    # every line of every process is one JSON object (Celery's own lines included)
    payment = json_lines(system.workers["payment"].log_text())
    orchestrator = json_lines(system.orchestrator.log_text())
    assert all({"time", "level", "logger", "message"} <= set(line) for line in payment)
    refused = [line for line in payment if "refused" in line["message"]]
    assert refused and refused[0]["saga_id"] == saga_id
    assert refused[0]["step"] == "charge_payment" and refused[0]["attempt"] == 1
    mine = [line for line in orchestrator if line.get("saga_id") == saga_id]
    assert any(line["message"].endswith("compensated") for line in mine)
    assert "4242" not in system.orchestrator.log_text() + system.workers["payment"].log_text()


def events_during_a_saga(system: System) -> list[dict[str, Any]]:
    """The Celery events the system's processes send while one saga runs to its end."""
    app = make_app(system.settings)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    receivers = []

    # Events cross every test's broker database: only this system's workers' count (their
    # names carry its queue prefix), not those of a test running beside it.
    prefix = system.settings.queue_prefix

    def keep(event: dict[str, Any]) -> None:
        if prefix in str(event.get("hostname", "")):
            seen.append(event)

    def capture() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": keep})
            receivers.append(receiver)
            ready.set()
            for _ in receiver.itercapture(limit=None, timeout=30, wakeup=False):
                if succeeded(seen) and received(seen):
                    return

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    assert ready.wait(10)
    saga_id = system.submit(make_order("E-1"))
    assert system.wait(saga_id).state is SagaState.COMPLETED
    receivers[0].should_stop = True  # seen within a second (its poll's safety interval)
    listener.join(30)
    assert not listener.is_alive()
    return seen


def received(events: list[dict[str, Any]]) -> bool:
    return any(
        e.get("type") == "task-received" and e.get("name") == "charge_payment" for e in events
    )


def succeeded(events: list[dict[str, Any]]) -> bool:
    return any(e.get("type") == "task-succeeded" for e in events)


def test_service_workers_send_task_events_when_asked(make_system: Callable[..., System]) -> None:
    seen = events_during_a_saga(make_system(task_events=True))
    assert received(seen), [e.get("type") for e in seen][:20]
    assert succeeded(seen)


@pytest.mark.any_broker
def test_no_task_events_by_default(system: System) -> None:
    # two publishes less per step; Flower's compose service runs with them on
    seen = events_during_a_saga(system)
    assert not any(e.get("type", "").startswith("task-") for e in seen), seen[:5]
