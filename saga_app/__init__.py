"""The public API: declare your saga and your services, and every tool runs them.

::

    from saga_app import App, BusinessError, Saga, Service, Step

    hotels = Service("hotels")

    @hotels.action("book_room")
    def book_room(db, payload):            # in the service's own database, once per key
        ...
        return {"booking_id": booking_id}

    @hotels.compensation("cancel_room", undoes="book_room")
    def cancel_room(db, payload, booked):  # booked: what book_room returned
        ...

    trip = Saga("trip", input=TripRequest, key="trip_id", steps=[
        Step("book_room", hotels, "book_room", compensation="cancel_room",
             payload=lambda trip, done: {"reference": trip["trip_id"], ...}),
        ...
    ])
    app = App(sagas=[trip], services=[hotels, ...])

A saga may also give ``sample`` (made-up inputs, for ``saga chaos`` and ``saga demo``) and
``fingerprint`` (what tells two requests apart under one ``Idempotency-Key``); an app,
``invariants`` (what ``saga audit`` checks besides what holds for every saga: functions of
:class:`Stores` yielding :class:`Violation`), ``setup`` (what its samples need in place)
and ``retired`` (earlier versions of its sagas, kept until their sagas in flight end).

Then ``SAGA_APP=mypackage.trip:app saga worker hotels``, ``saga orchestrator``, and so on
(the order saga's app, ``order_app:app``, is the default), and from Python::

    import saga_app
    saga_id = saga_app.run(document, saga="trip")   # returns once the saga has ended
    saga_id = saga_app.submit(document)             # the app's first saga; at once
    view = saga_app.get_saga(saga_id)               # view.state is a SagaState

Everything a saga's author writes comes from this module.
"""

from saga_app.app import BUILT_IN, App, AppError, configured, load, of
from saga_app.client import cancel, get_saga, resolve, retry, run, submit, wait
from saga_app.declare import Saga, Step, document_fingerprint
from saga_app.invariants import Ended, Invariant, Stores, Violation
from saga_core.database import Connection, for_update, transaction
from saga_core.errors import (
    BusinessError,
    InvalidInput,
    SagaError,
    SagaNotFound,
    TransientError,
    TransitionRefused,
)
from saga_core.retry import RetryPolicy
from saga_store.models import SagaState, SagaView, StepState, StepView
from workers.migrations import create_ledger_tables
from workers.service import Service

__all__ = [
    "BUILT_IN",
    "App",
    "AppError",
    "BusinessError",
    "Connection",
    "Ended",
    "InvalidInput",
    "Invariant",
    "RetryPolicy",
    "Saga",
    "SagaError",
    "SagaNotFound",
    "SagaState",
    "SagaView",
    "Service",
    "Step",
    "StepState",
    "StepView",
    "Stores",
    "TransientError",
    "TransitionRefused",
    "Violation",
    "cancel",
    "configured",
    "create_ledger_tables",
    "document_fingerprint",
    "for_update",
    "get_saga",
    "load",
    "of",
    "resolve",
    "retry",
    "run",
    "submit",
    "transaction",
    "wait",
]
