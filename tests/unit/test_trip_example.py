"""The trip example, a saga a user writes with the public API: it loads and is checked as
any app is, its services book in their own databases, and its payment goes through the
example's provider over HTTP by idempotency key, once per key."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.trip import provider
from saga_app import BusinessError, InvalidInput, load
from saga_core.config import Settings
from tests.helpers import TRIP


@pytest.fixture
def provider_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = provider.serve(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("TRIP_PROVIDER_URL", url)
    yield url
    server.shutdown()
    server.server_close()


def charges(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/charges", timeout=5) as response:
        return list(json.loads(response.read())["charges"])


def run_steps(app: Any, data_dir: Path, trip: dict[str, Any], saga_id: str) -> dict[str, Any]:
    """Each step as the orchestrator would send it and a worker run it, in order."""
    definition = app.definitions["trip"]
    stored, key = definition.prepare(trip)
    assert key == trip["trip_id"]
    outputs: dict[str, Any] = {}
    for step in definition.steps:
        service = app.service(step.queue)
        db = service.database(Settings(data_dir=data_dir).service_database(service.name))
        outputs[step.name], _ = service.run(
            db, step.action, f"{saga_id}:{step.name}", step.payload(stored, outputs)
        )
    return outputs


def test_the_trip_books_everything_and_pays_once(tmp_path: Path, provider_url: str) -> None:
    app = load("examples.trip:app")
    assert [s.name for s in app.definitions["trip"].steps] == [
        "book_flight",
        "book_hotel",
        "rent_car",
        "take_payment",
    ]
    first = run_steps(app, tmp_path, TRIP, "s1")
    # a redelivered run of every step: the ledger's answers, nothing booked or paid again
    assert run_steps(app, tmp_path, TRIP, "s1") == first
    [charge] = charges(provider_url)
    assert charge["charge_id"] == first["take_payment"]["charge_id"]
    assert charge["amount_cents"] == 125_000 and charge["reference"] == "T-1"
    for service, step in (("flights", "book_flight"), ("cars", "rent_car")):
        db = app.service(service).database(tmp_path)
        rows = db.execute("SELECT id, state FROM bookings").fetchall()
        assert [tuple(r) for r in rows] == [(first[step]["booking_id"], "booked")]


def test_a_declined_payment_and_its_refusals(tmp_path: Path, provider_url: str) -> None:
    app = load("examples.trip:app")
    with pytest.raises(BusinessError, match="the provider refused"):
        run_steps(app, tmp_path, {**TRIP, "amount_cents": 900_000}, "s2")
    assert charges(provider_url) == []
    with pytest.raises(InvalidInput, match="invalid trip: amount_cents"):
        app.definitions["trip"].prepare({**TRIP, "amount_cents": 0})
    with pytest.raises(InvalidInput, match="invalid trip: trip_id"):
        app.definitions["trip"].prepare({**TRIP, "trip_id": "no spaces"})


def test_a_refund_goes_to_the_provider_once(tmp_path: Path, provider_url: str) -> None:
    app = load("examples.trip:app")
    paid = run_steps(app, tmp_path, TRIP, "s3")["take_payment"]
    payments = app.service("payments")
    db = payments.database(Settings(data_dir=tmp_path).service_database("payments"))
    refunded = [payments.run(db, "refund_payment", "s3:take_payment", {}) for _ in range(2)]
    assert refunded[0][0] == refunded[1][0] and refunded[0][1] is True
    [charge] = charges(provider_url)
    assert charge["charge_id"] == paid["charge_id"]
    assert charge["refund_id"] == refunded[0][0]["refund_id"]


def test_the_readme_shows_the_example_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    shown = readme.split("## Your own saga", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert shown == (root / "examples" / "trip" / "__init__.py").read_text()
    # and its definition fits on one screen
    assert len(shown.splitlines()) <= 60
