"""The trip example as a user runs it: ``SAGA_APP=examples.trip:app``, its four services'
workers and the orchestrator as real processes on the real broker, its payment through
the example's provider over HTTP; a worker SIGKILLed in the middle of a step."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import saga_app
from saga_app import configured
from saga_core import broker
from saga_core.config import Settings
from saga_core.processes import leaves
from saga_core.signing import CLIENT, new_keys
from saga_store import SagaState
from saga_tools import audit
from saga_tools.cluster import Cluster, saga_command
from saga_tools.redis_server import free_port
from tests.helpers import TRIP, clean_chaos_run
from tests.integration.test_http_api import serve_api

# the app is what is under test here, not the broker: Redis only (conftest, any_broker)
pytestmark = [pytest.mark.processes, pytest.mark.any_broker]


@pytest.fixture
def provider() -> Iterator[str]:
    """The example's payment provider, a process of its own."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.trip.provider", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and "payment provider on" in process.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(10)


@pytest.fixture
def trip_env(settings: Settings, provider: str) -> dict[str, str]:
    """The environment of a process of the trip's system: its app, keys and provider."""
    trip = configured(settings.with_(app="examples.trip:app"))
    return {
        **trip.with_(keys=new_keys(trip.identities)).to_env(),
        "TRIP_PROVIDER_URL": provider,
    }


@pytest.fixture
def trips(settings: Settings, provider: str) -> Iterator[Cluster]:
    app = configured(settings.with_(app="examples.trip:app"))
    app = app.with_(keys=new_keys([*app.services, CLIENT]))
    cluster = Cluster(app, app_env={"TRIP_PROVIDER_URL": provider})
    broker.purge(app.broker_url, app.all_queues())
    cluster.start().wait_ready()
    yield cluster
    cluster.stop()
    broker.discard(app.broker_url, app.all_queues())
    print("\n".join(child.log_text()[-3000:] for child in cluster.children))


def charges(provider: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(provider + "/charges", timeout=5) as response:
        return list(json.loads(response.read())["charges"])


def bookings(settings: Settings, service: str) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.data_dir / f"{service}.db") as db:
        return list(db.execute("SELECT reference, state FROM bookings ORDER BY reference"))


def test_trips_book_and_pay_or_are_undone(
    trips: Cluster, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = trips.settings
    # When a trip is booked, and one the provider declines
    booked = saga_app.submit({**TRIP, "trip_id": "T-1"}, saga="trip", settings=s)
    declined = saga_app.submit(
        {**TRIP, "trip_id": "T-2", "amount_cents": 900_000}, saga="trip", settings=s
    )
    # Then the first completes, paid once; the second is undone step by step
    assert saga_app.wait(booked, settings=s, timeout=60).state is SagaState.COMPLETED
    view = saga_app.wait(declined, settings=s, timeout=60)
    assert view.state is SagaState.COMPENSATED
    assert "the provider refused" in str(view.step("take_payment").error)
    for service in ("flights", "hotels", "cars"):
        assert bookings(s, service) == [("T-1", "booked"), ("T-2", "cancelled")]
    [charge] = charges(provider)
    assert charge["reference"] == "T-1" and charge["refund_id"] is None
    # the same trip_id again is the same saga
    assert saga_app.submit({**TRIP, "trip_id": "T-1"}, saga="trip", settings=s) == booked
    # and the audit, with the trip's own invariants (the provider's charges among them),
    # finds the system clean, then finds a booking left behind
    monkeypatch.setenv("TRIP_PROVIDER_URL", provider)
    assert audit.audit(s).ok, audit.audit(s).violations
    with sqlite3.connect(s.data_dir / "cars.db") as db:
        db.execute("UPDATE bookings SET state = 'booked' WHERE reference = 'T-2'")
    assert [(v.check, v.saga_id) for v in audit.audit(s).violations] == [("bookings", declined)]


def test_a_payments_worker_killed_mid_saga_pays_once(trips: Cluster, provider: str) -> None:
    s = trips.settings
    # Given the payments worker's process SIGKILLed as a trip is submitted
    worker = trips.workers["payments"]
    [process] = leaves(worker.pid)
    os.kill(process, signal.SIGKILL)
    saga_id = saga_app.submit({**TRIP, "trip_id": "T-3"}, saga="trip", settings=s)
    # Then its supervisor starts it again, and the trip completes, paid once
    assert saga_app.wait(saga_id, settings=s, timeout=90).state is SagaState.COMPLETED
    # (seen killed by its supervisor: `saga worker` on the solo pool, Celery on prefork)
    assert "SIGKILL" in worker.log_text()
    assert [c["reference"] for c in charges(provider)] == ["T-3"]


@pytest.mark.timeout(240)
def test_a_chaos_campaign_on_the_trip_saga_ends_with_a_clean_audit(
    trip_env: dict[str, str], provider: str
) -> None:
    # As the README has it: SAGA_APP names the app, the campaign runs its saga
    report = clean_chaos_run(
        trip_env,
        *("--orders", "120", "--kills", "6", "--kill-every", "0.8", "--seed", "3"),
        *("--compensation-failure-rate", "0.05"),
    )
    assert sum(report["final_states"].values()) == 120
    assert sum(report["kills"].values()) == 6
    # every trip the campaign completed was charged once at the provider, and kept
    kept = [c for c in charges(provider) if c["refund_id"] is None]
    assert len(kept) == report["final_states"].get("completed", 0) > 0


def test_the_http_api_starts_a_trip_and_shows_its_schema(trips: Cluster, provider: str) -> None:
    api = contextlib.contextmanager(serve_api)(trips.settings, TRIP_PROVIDER_URL=provider)
    with api as client:
        headers = {"content-type": "application/json"}
        posted = client.call("POST", "/sagas/trip", json.dumps(TRIP).encode(), headers)
        assert posted.status == 202, posted.body
        invalid = {**TRIP, "amount_cents": "lots"}
        refused = client.call("POST", "/sagas/trip", json.dumps(invalid).encode(), headers)
        unknown = client.call("POST", "/sagas/cruise", json.dumps(TRIP).encode(), headers)
        spec = client.call("GET", "/openapi.json").body
        shown = client.call("GET", f"/sagas/{posted.body['saga_id']}")
        trips_listed = client.call("GET", "/sagas?saga=trip").body["sagas"]
        orders_listed = client.call("GET", "/sagas?saga=order").body["sagas"]
    assert refused.status == 422 and refused.body["title"] == "Invalid trip"
    assert refused.body["errors"][0]["field"] == "amount_cents"
    assert unknown.status == 404 and "no saga named 'cruise'" in unknown.body["detail"]
    # the OpenAPI document shows the trip's own input, and no order route
    body = spec["paths"]["/sagas/trip"]["post"]["requestBody"]["content"]["application/json"]
    assert {"trip_id", "amount_cents"} <= set(body["schema"]["properties"])
    assert "/orders" not in spec["paths"]
    assert (shown.body["saga"], shown.body["key"]) == ("trip", TRIP["trip_id"])
    assert [(t["id"], t["saga"]) for t in trips_listed] == [(posted.body["saga_id"], "trip")]
    assert orders_listed == []
    view = saga_app.wait(posted.body["saga_id"], settings=trips.settings, timeout=60)
    assert view.state is SagaState.COMPLETED


@pytest.mark.timeout(200)
def test_the_demo_runs_the_trip_saga_from_its_samples(trip_env: dict[str, str]) -> None:
    result = subprocess.run(
        saga_command("demo", "--orders", "8", "--business-rate", "0"),
        env={**os.environ, **trip_env},
        capture_output=True,
        text=True,
        timeout=190,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "8 of 8 sagas ended" in out and "trip-000008" in out
    # the one sample whose compensation never succeeds fails, with an alert
    assert "compensation keeps failing" in out and "ALERT saga" in out
    assert out.rstrip().endswith("audit: clean")
