"""The whole system on PostgreSQL: the saga store and every service in schemas of one
database of the test's own, two orchestrators on the same outcome queue and two worker
processes per service sharing each service's ledger; killed mid-saga, every order still
ends done or undone, each effect once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import pytest

from saga_core.processes import children_of, wait_for
from saga_store import SagaState, open_reader, queries
from saga_tools import audit
from saga_tools.cluster import Child
from saga_tools.redis_server import free_port
from tests.helpers import DECLINED_CARD, ONE_OF_EACH, make_order, service_records
from tests.integration.conftest import System
from tests.integration.test_cli import saga
from tests.integration.test_http_api import serve_api
from tests.integration.test_metrics import reachable, scrape

pytestmark = pytest.mark.processes


def holder_of(system: System, saga_id: str, step: str, service: str) -> Child:
    """The worker process that reports running ``step`` of the saga (by its heartbeat)."""
    store = open_reader(system.settings.store())
    try:
        held_by = wait_for(
            lambda: queries.get_saga(store, saga_id).step(step).held_by,
            20,
            f"a worker to report holding {step}",
        )
    finally:
        store.close()
    pid = int(held_by.rsplit(" ", 1)[1])
    for child in system.replicas[service]:
        if pid == child.pid or pid in children_of(child.pid):
            return child
    raise AssertionError(f"no {service} worker has pid {pid} ({held_by})")


@pytest.mark.any_broker
@pytest.mark.timeout(240)
def test_two_orchestrators_and_two_replicas_on_postgresql_survive_kills(
    make_system: Callable[..., System], postgres_database: str
) -> None:
    system = make_system(
        orchestrators=2, replicas=2, database_url=postgres_database, step_timeout=10.0
    )
    # Given orders under way, one with a slow charge
    slow = system.submit(make_order("PG-1"), faults={"charge_payment": {"delay_seconds": 3}})
    others = [system.submit(make_order(f"PG-{n}")) for n in range(2, 5)]  # the stock: 5 orders
    declined = system.submit(make_order("PG-6", card_number=DECLINED_CARD))
    system.wait_step_running("charge_payment", slow, "charge_payment")
    # When the payment worker running the slow charge and one orchestrator are SIGKILLed
    victim = holder_of(system, slow, "charge_payment", "payment")
    system.kill_and_wait(victim)
    system.kill_and_wait(system.orchestrators[0])
    # Then every order ends, the slow one charged once, with the survivors alone
    assert system.wait(slow, timeout=120).state is SagaState.COMPLETED
    assert service_records(system.settings, "PG-1") == ONE_OF_EACH
    for saga_id in others:
        assert system.wait(saga_id, timeout=60).state is SagaState.COMPLETED
    assert system.wait(declined, timeout=60).state is SagaState.COMPENSATED
    assert service_records(system.settings, "PG-6")["charges"] == 0
    report = audit.audit(system.settings, settle_seconds=0)
    assert report.ok, report.violations
    assert report.sagas_by_state == {"completed": 4, "compensated": 1}


@pytest.mark.any_broker
def test_the_operator_tools_read_a_system_on_postgresql(
    make_system: Callable[..., System], postgres_database: str
) -> None:
    """``saga show``, ``list`` and ``audit``, the API, the web view and the metrics, on a
    system whose every database is PostgreSQL."""
    port = free_port()
    system = make_system(
        database_url=postgres_database, orchestrator_args=("--metrics-port", str(port))
    )
    served = serve_api(system)
    with contextlib.closing(served):
        api = next(served)
        done = api.post_order(make_order("OPS-1")).body["saga_id"]
        declined = api.post_order(make_order("OPS-2", card_number=DECLINED_CARD)).body["saga_id"]
        assert system.wait(done).state is SagaState.COMPLETED
        assert system.wait(declined).state is SagaState.COMPENSATED

        shown = saga(system.settings, "show", declined)
        assert shown.returncode == 0, shown.stderr
        assert "reason: charge_payment: card declined" in shown.stdout
        listed = json.loads(saga(system.settings, "list", "--json").stdout)
        assert {s["id"] for s in listed} == {done, declined}
        audited = saga(system.settings, "audit", "--json")
        assert audited.returncode == 0 and json.loads(audited.stdout)["ok"] is True

        assert api.call("GET", f"/sagas/{done}").body["state"] == "completed"
        assert api.call("GET", "/healthz").status == 200
        page = api.call("GET", f"/ui/sagas/{declined}")
        assert page.status == 200 and "card declined" in page.body
        assert declined in api.call("GET", "/").body
        wait_for(lambda: reachable(port), 30, "the metrics endpoint")
        metrics = scrape(port)
        for state in ("completed", "compensated"):
            labels = frozenset({("saga", "order"), ("state", state)})
            assert metrics[("saga_sagas_finished_total", labels)] == 1
