"""What the trip saga promises beyond what holds for every saga (``saga audit`` checks
both), and the made-up trips ``saga chaos`` and ``saga demo`` submit."""

from __future__ import annotations

import json
import random
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

from examples.trip.services import provider_url
from saga_app import Stores, Violation

FLIGHTS = ("LH1234", "AF0042", "BA0117")
HOTELS = ("Hotel du Lac", "Grand Central", "Pension Alma")
CARS = ("compact", "estate", "van")


def sample(n: int, rng: random.Random) -> dict[str, Any]:
    """The ``n``-th trip; now and then one the provider declines."""
    declined = rng.random() < 0.03
    return {
        "trip_id": f"trip-{n:06d}",
        "traveller": f"Traveller {n}",
        "flight": rng.choice(FLIGHTS),
        "hotel": rng.choice(HOTELS),
        "car": rng.choice(CARS),
        # the provider declines above its limit (provider.LIMIT_CENTS, 500,000)
        "amount_cents": 900_000 if declined else rng.randint(10_000, 400_000),
    }


def bookings_match(stores: Stores) -> Iterator[Violation]:
    """A completed trip holds one live booking in each booking service, a compensated
    one none, and every booking belongs to a trip."""
    trips = {s.input["trip_id"]: s for s in stores.of("trip")}
    for service in ("flights", "hotels", "cars"):
        rows = stores.rows(service, "SELECT reference, state FROM bookings")
        live = Counter(r["reference"] for r in rows if r["state"] == "booked")
        for reference in {r["reference"] for r in rows} - set(trips):
            yield Violation("strays", None, f"{service}: a booking for {reference!r}, no trip's")
        for reference, trip in trips.items():
            want = {"completed": 1, "compensated": 0}.get(trip.state)
            if want is not None and live[reference] != want:
                why = f"{trip.state} but holds {live[reference]} live {service} booking(s)"
                yield Violation("bookings", trip.id, why)


def provider_agrees(stores: Stores) -> Iterator[Violation]:
    """At the provider, a completed trip was charged once and not refunded, a compensated
    one holds no charge it was not refunded (its charges are found by the idempotency key
    they were made under, which begins with the saga's id)."""
    try:
        with urllib.request.urlopen(provider_url() + "/charges", timeout=10) as response:
            charges = json.loads(response.read())["charges"]
    except OSError as exc:
        yield Violation("provider", None, f"cannot read the provider's charges: {exc}")
        return
    by_saga: dict[str, list[dict[str, Any]]] = {}
    for charge in charges:
        by_saga.setdefault(str(charge["key"]).split(":", 1)[0], []).append(charge)
    for trip in stores.of("trip"):
        made = by_saga.get(trip.id, [])
        kept = [c for c in made if c["refund_id"] is None]
        if len(made) > 1:
            yield Violation("once", trip.id, f"{len(made)} charges at the provider")
        if trip.state == "completed" and len(kept) != 1:
            yield Violation("provider", trip.id, f"completed, {len(kept)} charges kept")
        elif trip.state == "compensated" and kept:
            yield Violation("provider", trip.id, "compensated, but a charge was not refunded")
