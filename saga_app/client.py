"""The Python API: submit a saga's input, wait for it, look at a saga.

Each function takes an optional :class:`Settings`; by default they are read from the
environment (``SAGA_*``), the app included (``SAGA_APP``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.engine import Engine
from orchestrator.process import celery_publisher
from saga_app.app import configured, of
from saga_core import config, database
from saga_core.celery_app import make_app
from saga_core.config import Settings
from saga_core.errors import SagaError
from saga_store.models import SagaState, SagaView

_engines: dict[str, tuple[Engine, tuple[int, int] | None]] = {}


def _engine(settings: Settings) -> Engine:
    """One engine (a store connection and a broker producer) per distinct settings, and
    per store: a SQLite store made again under the same path (its data directory removed
    and the system started afresh) is another file, which the last engine's connection
    would never see."""
    key = json.dumps(settings.to_env(), sort_keys=True)
    cached = _engines.get(key)
    if cached is not None and cached[1] == _store_file(settings):
        return cached[0]
    saga_app = of(settings)
    publisher = celery_publisher(make_app(settings, "client"), settings)
    engine = Engine(settings, saga_app.definitions, publisher, retired=saga_app.retired_definitions)
    _engines[key] = (engine, _store_file(settings))
    return engine


def _store_file(settings: Settings) -> tuple[int, int] | None:
    """Which file the SQLite store is now (device and inode; None where there is none)."""
    where = settings.store()
    if where.dialect != database.SQLITE:
        return None
    try:
        found = where.path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _settings(settings: Settings | None) -> Settings:
    return configured(settings if settings is not None else config.load())


def submit(document: Any, *, saga: str | None = None, settings: Settings | None = None) -> str:
    """Start the saga named ``saga`` (the app's first, by default) for ``document`` and
    return its id at once.

    Raises ``InvalidInput`` (naming the field) before anything is stored. Submitting the
    same idempotency key again (an order's ``order_id``) returns the first saga's id and
    starts nothing. While the broker is down the saga is stored all the same, and starts
    when the broker is back.
    """
    settings = _settings(settings)
    name = saga if saga is not None else of(settings).sagas[0].name
    return _engine(settings).submit(name, document).saga_id


def retry(saga_id: str, *, actor: str, settings: Settings | None = None) -> SagaState:
    """Run a failed saga's given-up compensations again; raises ``TransitionRefused``
    unless it is ``failed`` with an open alert."""
    return _engine(_settings(settings)).retry(saga_id, actor)


def resolve(saga_id: str, note: str, *, actor: str, settings: Settings | None = None) -> None:
    """Record that a person settled a failed saga by hand; it leaves the alert list."""
    _engine(_settings(settings)).resolve(saga_id, note, actor)


def cancel(saga_id: str, *, actor: str, settings: Settings | None = None) -> SagaState:
    """Stop a pending or running saga and compensate what took effect."""
    return _engine(_settings(settings)).cancel(saga_id, actor)


def get_saga(saga_id: str, *, settings: Settings | None = None) -> SagaView:
    """The saga and its steps; raises ``SagaNotFound`` for an unknown id."""
    return _engine(_settings(settings)).get(saga_id)


def wait(
    saga_id: str,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    poll: float = 0.05,
) -> SagaView:
    """Block until the saga is in a terminal state; ``TimeoutError`` after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        view = get_saga(saga_id, settings=settings)
        if view.state.terminal:
            return view
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"saga {saga_id} is still {view.state} after {timeout}s")
        time.sleep(poll)


def run(
    document: Any,
    *,
    saga: str | None = None,
    settings: Settings | None = None,
    timeout: float | None = None,
) -> str:
    """Submit ``document`` and return the saga id once the saga has ended
    (completed, compensated or failed)."""
    saga_id = submit(document, saga=saga, settings=settings)
    wait(saga_id, settings=settings, timeout=timeout)
    return saga_id


__all__ = ["SagaError", "cancel", "get_saga", "resolve", "retry", "run", "submit", "wait"]
