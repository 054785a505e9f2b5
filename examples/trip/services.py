"""The trip's services: three that book in databases of their own, and one that takes the
money through an outside provider (``examples.trip.provider``), handing it the step's
idempotency key."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from saga_app import BusinessError, Connection, Service, TransientError

MIGRATIONS = Path(__file__).parent / "migrations"
flights = Service("flights", migrations=MIGRATIONS / "flights", head="0001")
hotels = Service("hotels", migrations=MIGRATIONS / "hotels", head="0001")
cars = Service("cars", migrations=MIGRATIONS / "cars", head="0001")
#: no tables of its own: its effect is the provider's, its database the ledger alone
payments = Service("payments")


def provider_url() -> str:
    """Where the payment provider answers (the example's own, started beside it)."""
    return os.environ.get("TRIP_PROVIDER_URL", "http://127.0.0.1:8765")


def _bookings(service: Service, book: str, undo: str) -> None:
    """``book`` writes a booking in the service's database; ``undo`` cancels it."""

    @service.action(book)
    def make(db: Connection, payload: dict[str, Any]) -> dict[str, str]:
        booking_id = f"{service.name[:2]}_{uuid.uuid4().hex[:16]}"
        db.execute(
            "INSERT INTO bookings (id, reference, item, state) VALUES (?, ?, ?, 'booked')",
            (booking_id, payload["reference"], payload["item"]),
        )
        return {"booking_id": booking_id}

    @service.compensation(undo, undoes=book)
    def cancel(db: Connection, payload: dict[str, Any], booked: dict[str, str]) -> None:
        db.execute("UPDATE bookings SET state = 'cancelled' WHERE id = ?", (booked["booking_id"],))


_bookings(flights, "book_flight", "cancel_flight")
_bookings(hotels, "book_hotel", "cancel_hotel")
_bookings(cars, "rent_car", "return_car")


@payments.action("take_payment", outside=True)
def take(payload: dict[str, Any], key: str) -> Any:
    body = {"reference": payload["reference"], "amount_cents": payload["amount_cents"]}
    return _post("/charges", body, key)


@payments.compensation("refund_payment", undoes="take_payment", outside=True)
def refund(payload: dict[str, Any], taken: dict[str, Any], key: str) -> Any:
    return _post("/refunds", {"charge_id": taken["charge_id"]}, key)


def _post(path: str, body: dict[str, Any], key: str) -> Any:
    """The provider's answer; a refusal (402) is the business's, anything else passes."""
    request = urllib.request.Request(
        provider_url() + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "idempotency-key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 402:
            raise BusinessError(f"the provider refused: {exc.read()[:200].decode()}") from None
        raise TransientError(f"the provider answered {exc.code}") from None
    except OSError as exc:
        raise TransientError(f"the provider does not answer: {exc}") from None
