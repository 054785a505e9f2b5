"""A trip booking, the second saga of this project's users: a flight, a hotel and a car,
each booked in its own service's database, then the payment, taken through an outside
provider's HTTP API by idempotency key. Run it with ``SAGA_APP=examples.trip:app``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from examples.trip import checks
from examples.trip.services import cars, flights, hotels, payments
from saga_app import App, RetryPolicy, Saga, Step


class Trip(BaseModel):
    trip_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    traveller: str = Field(min_length=1, max_length=100)
    flight: str = Field(min_length=1, max_length=20)
    hotel: str = Field(min_length=1, max_length=100)
    car: str = Field(min_length=1, max_length=40)
    amount_cents: int = Field(ge=1, le=10_000_000)


def booking(item: str) -> Any:
    return lambda trip, _: {"reference": trip["trip_id"], "item": trip[item]}


RETRY = RetryPolicy(max_retries=3, backoff_base=0.2, backoff_max=5.0)

TRIP = Saga(
    "trip",
    input=Trip,
    key="trip_id",
    sample=checks.sample,
    steps=[
        Step(
            "book_flight", flights, "book_flight", booking("flight"), "cancel_flight", retry=RETRY
        ),
        Step("book_hotel", hotels, "book_hotel", booking("hotel"), "cancel_hotel", retry=RETRY),
        Step("rent_car", cars, "rent_car", booking("car"), "return_car", retry=RETRY),
        Step(
            "take_payment",
            payments,
            "take_payment",
            lambda trip, _: {"reference": trip["trip_id"], "amount_cents": trip["amount_cents"]},
            "refund_payment",
            retry=RETRY,
        ),
    ],
)

app = App(
    sagas=[TRIP],
    services=[flights, hotels, cars, payments],
    invariants=[checks.bookings_match, checks.provider_agrees],
)
