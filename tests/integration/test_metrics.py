"""The orchestrator's Prometheus metrics, scraped over HTTP after a few sagas."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saga_core.processes import wait_for
from saga_store import SagaState
from saga_tools.redis_server import free_port
from tests.helpers import make_order
from tests.integration.conftest import System

pytestmark = pytest.mark.processes


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def reachable(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


@pytest.mark.any_broker
def test_metrics_count_sagas_durations_and_retries(make_system: Callable[..., System]) -> None:
    port = free_port()
    system = make_system(orchestrator_args=("--metrics-port", str(port)))
    wait_for(lambda: reachable(port), 30, "the metrics endpoint")
    sagas = [system.submit(make_order(f"M-{n}")) for n in range(3)]
    sagas.append(system.submit(make_order("M-3"), faults={"charge_payment": {"fail_transient": 2}}))
    sagas.append(system.submit(make_order("M-4", card_number="4000000000000002")))
    states = [system.wait(s).state for s in sagas]
    assert states == [SagaState.COMPLETED] * 4 + [SagaState.COMPENSATED]

    m = scrape(port)

    def value(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert value("saga_sagas_started_total", saga="order") == 5
    assert value("saga_sagas_finished_total", saga="order", state="completed") == 4
    assert value("saga_sagas_finished_total", saga="order", state="compensated") == 1
    assert value("saga_sagas_finished_total", saga="order", state="failed") == 0
    assert value("saga_sagas_in_flight", saga="order", state="running") == 0
    assert value("saga_open_alerts") == 0
    reserve = {"step": "reserve_inventory", "phase": "action", "status": "succeeded"}
    assert value("saga_step_duration_seconds_count", **reserve) == 5
    assert 0 < value("saga_step_duration_seconds_sum", **reserve) < 5 * 20
    declined = {"step": "charge_payment", "phase": "action", "status": "rejected"}
    assert value("saga_step_duration_seconds_count", **declined) == 1
    release = {"step": "reserve_inventory", "phase": "compensation", "status": "succeeded"}
    assert value("saga_step_duration_seconds_count", **release) == 1
    assert value("saga_step_retries_total", step="charge_payment", phase="action") == 2
    assert value("saga_redispatches_total") == 0
