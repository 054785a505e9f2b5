"""A default install signs: with no keys configured, a system on one machine makes its own
keys in its data directory, so an outcome or an order forged by any process on the broker
is refused; a process that cannot share the data directory refuses to start without keys,
unless told to run insecure, which it then says at every start."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

from saga_core.celery_app import make_app
from saga_core.config import KEYS_FILE, ORCHESTRATOR_QUEUE, Settings
from saga_core.messages import OUTCOME_TASK, SUBMIT_TASK, Outcome, Phase, Status
from saga_core.processes import wait_for
from saga_store import SagaState, StepState, open_store, queries
from saga_tools.cluster import Child, saga_command
from tests.helpers import make_order, service_records
from tests.integration.conftest import System

pytestmark = pytest.mark.processes


@pytest.mark.any_broker
def test_a_default_install_refuses_a_forged_outcome_and_an_unsigned_order(
    make_system: Callable[..., System],
) -> None:
    # Given a system started with no keys configured, as the README starts one
    system = make_system(keys={})
    system.wait_ready()
    keys_file = system.data_dir / KEYS_FILE
    assert keys_file.stat().st_mode & 0o777 == 0o600
    for child in system.children:
        assert "messages signed and checked" in child.log_text(), child.name
    # and an order whose charge is under way, slowly
    saga_id = system.submit(make_order("D-1"), faults={"charge_payment": {"delay_seconds": 6}})
    system.wait_step_running("charge_payment", saga_id, "charge_payment")

    # When a process on the broker, with no key, says the charge succeeded
    forger = make_app(Settings(broker_url=system.settings.broker_url))
    queue = system.settings.queue(ORCHESTRATOR_QUEUE)
    claim = Outcome(saga_id, "charge_payment", Phase.ACTION, 1, Status.SUCCEEDED, 1, {"c": "x"})
    forger.send_task(OUTCOME_TASK, args=[claim.to_wire()], queue=queue)
    # and submits an order of its own
    forger.send_task(SUBMIT_TASK, args=[make_order("D-forged")], queue=queue)

    # Then both are refused as unsigned, and the saga waits for the real charge
    wait_for(
        lambda: system.orchestrator.log_text().count("not signed") >= 2,
        30,
        "the orchestrator to refuse both",
    )
    assert system.saga(saga_id).step("charge_payment").state is StepState.RUNNING
    assert system.wait(saga_id).state is SagaState.COMPLETED
    assert service_records(system.data_dir, "D-1")["charges"] == 1
    stored = queries.list_sagas(open_store(system.settings.store()))
    assert len(stored) == 1  # no saga for the forged order


def server(settings: Settings, *argv: str, **env: str) -> Child:
    return Child(
        "server",
        saga_command(*argv),
        {**settings.to_env(), "PYTHONUNBUFFERED": "1", **env},
        settings.data_dir / "logs" / f"{argv[0]}.log",
    ).start()


@pytest.mark.any_broker
@pytest.mark.parametrize("argv", [("orchestrator",), ("worker", "payment")])
def test_a_postgresql_process_without_keys_refuses_to_start(
    settings: Settings, postgres_database: str, argv: tuple[str, ...]
) -> None:
    configured = settings.with_(keys={}, database_url=postgres_database)
    # When it starts without keys, it refuses, saying how to make them
    refused = subprocess.run(
        saga_command(*argv),
        env={**os.environ, **configured.to_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "no message signing keys" in refused.stderr
    assert "SAGA_KEYS_FILE" in refused.stderr and "SAGA_INSECURE=1" in refused.stderr
    assert not (configured.data_dir / KEYS_FILE).exists()
    # and with the insecure switch, it starts and says so
    child = server(configured.with_(insecure=True), *argv)
    try:
        wait_for(
            lambda: "message signing is OFF (SAGA_INSECURE=1)" in child.log_text(),
            60,
            "the warning",
        )
        assert child.alive()
    finally:
        child.stop()
