"""The public API's app: every refusal at load time names the saga and the step."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from saga_app import App, AppError, InvalidInput, Saga, Service, Step, load


def services() -> tuple[Service, Service]:
    flights, mail = Service("flights"), Service("mail")

    @flights.action("book_flight")
    def book(db: Any, payload: dict[str, Any]) -> dict[str, Any]:
        return {}

    @flights.compensation("cancel_flight", undoes="book_flight")
    def cancel(db: Any, payload: dict[str, Any], booked: Any) -> None:
        return None

    @mail.action("send_mail")
    def send(db: Any, payload: dict[str, Any]) -> None:
        return None

    return flights, mail


def payload(trip: Any, done: Any) -> dict[str, Any]:
    return {"reference": trip["trip_id"]}


class Trip(BaseModel):
    trip_id: str = Field(min_length=1, max_length=40)
    seats: int = Field(ge=1, le=9)


def trip(*steps: Step) -> Saga:
    return Saga("trip", input=Trip, key="trip_id", steps=steps)


def test_a_sound_app_loads_and_gives_the_engine_its_definitions() -> None:
    flights, mail = services()
    app = App(
        sagas=[
            trip(
                Step("book_flight", flights, "book_flight", payload, compensation="cancel_flight"),
                Step("send_mail", mail, "send_mail", payload, best_effort=True),
            )
        ],
        services=[flights, mail],
    )
    definition = app.definitions["trip"]
    assert [(s.name, s.queue, s.compensation) for s in definition.steps] == [
        ("book_flight", "flights", "cancel_flight"),
        ("send_mail", "mail", None),
    ]
    assert app.service_names == ("flights", "mail")
    # the input is checked by its model; what is stored is its JSON, the key its trip_id
    assert definition.prepare({"trip_id": "T-1", "seats": 2}) == (
        {"trip_id": "T-1", "seats": 2},
        "T-1",
    )
    with pytest.raises(InvalidInput, match=r"invalid trip: seats: Input should be less"):
        definition.prepare({"trip_id": "T-1", "seats": 10})
    assert app.saga("trip").schema is not None and "seats" in app.saga("trip").schema["properties"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            lambda f, m: [Step("book_flight", f, "book_hotel", payload, irreversible=True)],
            "saga 'trip', step 'book_flight': action 'book_hotel' is not registered on "
            "service 'flights'",
        ),
        (
            lambda f, m: [
                Step("book_flight", f, "book_flight", payload, compensation="cancel_flight"),
                Step("book_flight", f, "book_flight", payload, compensation="cancel_flight"),
            ],
            "saga 'trip', step 'book_flight': the step name is used twice",
        ),
        (
            lambda f, m: [Step("book_flight", f, "book_flight", payload)],
            "saga 'trip', step 'book_flight': no compensation; say why",
        ),
        (
            lambda f, m: [
                Step("book_flight", f, "book_flight", payload, compensation="refund_flight")
            ],
            "saga 'trip', step 'book_flight': compensation 'refund_flight' is not registered",
        ),
        (
            lambda f, m: [Step("send_mail", m, "send_mail", payload, compensation="cancel_flight")],
            "saga 'trip', step 'send_mail': compensation 'cancel_flight' is not registered on "
            "service 'mail'",
        ),
        (
            lambda f, m: [Step("book_flight", f, "cancel_flight", payload, irreversible=True)],
            "saga 'trip', step 'book_flight': action 'cancel_flight' is not registered",
        ),
    ],
)
def test_each_unsound_app_is_refused_naming_the_saga_and_the_step(steps: Any, message: str) -> None:
    flights, mail = services()
    with pytest.raises(AppError) as refused:
        App(sagas=[trip(*steps(flights, mail))], services=[flights, mail])
    assert message in str(refused.value)


def test_one_step_name_on_two_services_across_sagas_is_refused() -> None:
    flights, mail = services()
    one = trip(Step("notify", mail, "send_mail", payload, best_effort=True))
    other = Saga(
        "other",
        input=Trip,
        key="trip_id",
        steps=[Step("notify", flights, "book_flight", payload, irreversible=True)],
    )
    with pytest.raises(AppError, match="step 'notify' runs on 'mail' in one definition"):
        App(sagas=[one, other], services=[flights, mail])


def test_a_retired_version_is_checked_as_a_current_one_and_runs_its_own_sagas() -> None:
    flights, mail = services()
    old = trip(
        Step("book_flight", flights, "book_flight", payload, compensation="cancel_flight"),
        Step("send_mail", mail, "send_mail", payload, best_effort=True),
    )
    new = trip(Step("book_flight", flights, "book_flight", payload, compensation="cancel_flight"))
    app = App(sagas=[new], services=[flights, mail], retired=[old])
    was, now = old.definition(), app.definitions["trip"]
    assert was.version != now.version
    assert app.definition_of(f"trip@{was.version}") is app.retired_definitions[0]
    assert app.definition_of(f"trip@{now.version}") is now
    assert app.definition_of("trip") is now  # stored before versions: the current one
    assert app.definition_of("trip@000000000000") is None
    # a retired version's steps must still be served: its sagas in flight need them
    gone = trip(Step("book_flight", flights, "book_car", payload, compensation="cancel_flight"))
    with pytest.raises(AppError, match="saga 'trip', step 'book_flight': action 'book_car'"):
        App(sagas=[new], services=[flights, mail], retired=[gone])
    with pytest.raises(AppError, match="kept for versions"):
        App(sagas=[Saga("trip@2", input=Trip, key="trip_id", steps=new.steps)], services=[flights])


def test_a_model_input_whose_key_is_not_a_field_is_refused() -> None:
    _, mail = services()
    steps = [Step("send_mail", mail, "send_mail", payload, best_effort=True)]
    for key in (None, "trip"):
        with pytest.raises(AppError, match=f"saga 'trip': key {key!r} is not a field"):
            App(sagas=[Saga("trip", input=Trip, key=key, steps=steps)], services=[mail])


def test_a_step_on_a_service_the_app_lacks_is_refused() -> None:
    flights, mail = services()
    saga = trip(Step("send_mail", mail, "send_mail", payload, best_effort=True))
    with pytest.raises(AppError, match="step 'send_mail': its service 'mail' is not in the app"):
        App(sagas=[saga], services=[flights])


def test_one_operation_on_two_services_is_refused() -> None:
    flights, mail = services()
    mail.action("book_flight")(lambda db, payload: None)
    saga = trip(Step("send_mail", mail, "send_mail", payload, best_effort=True))
    with pytest.raises(AppError, match="'book_flight' is registered on services 'flights'"):
        App(sagas=[saga], services=[flights, mail])


def test_saga_app_names_a_module_and_an_app(monkeypatch: pytest.MonkeyPatch) -> None:
    _, mail = services()
    saga = trip(Step("send_mail", mail, "send_mail", payload, best_effort=True))
    module = types.ModuleType("a_users_trip")
    module.app = App(sagas=[saga], services=[mail])  # type: ignore[attr-defined]
    module.other = "not an app"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "a_users_trip", module)
    assert load("a_users_trip:app") is module.app  # type: ignore[attr-defined]
    assert load("a_users_trip") is module.app  # type: ignore[attr-defined]
    with pytest.raises(AppError, match=r"a_users_trip.other is not a saga_app.App"):
        load("a_users_trip:other")
    with pytest.raises(AppError, match=r"cannot import 'no_such_module'"):
        load("no_such_module:app")


def test_the_foundation_names_no_service_saga_order_card_token_or_fault() -> None:
    """saga_core serves any app, and only the engine's own concerns: a saga, its services
    and its input are its app's to name, an API's callers and a test tool's faults are the
    concerns of the layers above."""
    root = Path(__file__).resolve().parents[2] / "saga_core"
    named = re.compile(
        r"\b(inventory|payment|shipping|notification|orders?|order_id|cards?|faults?"
        r"|api[ _]?tokens?|bearer|hotels?|cars?)\b|(?<!round )\btrip\b|(?<!in )\bflights?\b",
        re.IGNORECASE,
    )
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if named.search(line)
    ]
    assert found == []
