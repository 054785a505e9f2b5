"""The HTTP API (``saga api``): start sagas, read them, their history and the alerts, and
act on them as an operator (retry, resolve, cancel).

Errors are ``application/problem+json`` (RFC 9457). A request body larger than
``MAX_BODY_BYTES`` is refused before it is parsed. Who may do what: ``auth``.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse

from orchestrator.engine import Engine
from orchestrator.process import celery_publisher
from saga_app import Saga
from saga_app.app import of as app_of
from saga_core import broker, wire
from saga_core.celery_app import make_app
from saga_core.config import Settings
from saga_core.database import Connection
from saga_core.errors import IdempotencyConflict, InvalidInput, MalformedMessage, SagaError
from saga_store import SagaState, queries
from saga_tools.tokens import api_tokens
from saga_tools.web import guarded, pages
from saga_tools.web.auth import Caller, Tokens
from saga_tools.web.bodies import limited_body, parse
from saga_tools.web.problems import Problem, install_handlers

MAX_KEY_LENGTH = 200
MAX_NOTE_LENGTH = 1000

#: The longest cursor a client may send back: this API's own are about 100 characters.
MAX_CURSOR_LENGTH = 400


def _needs(scope: str) -> Callable[..., Caller]:
    def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
        tokens: Tokens = request.app.state.tokens
        return tokens.caller(authorization, scope)

    return caller


# The caller of a request, allowed the scope named (``auth``): 401 or 403 otherwise.
Writer = Annotated[Caller, Depends(_needs("orders:write"))]
Reader = Annotated[Caller, Depends(_needs("sagas:read"))]
Operator = Annotated[Caller, Depends(_needs("operator"))]


def create_app(settings: Settings) -> FastAPI:
    tokens = Tokens(api_tokens(settings))
    saga_app = app_of(settings)
    app = FastAPI(
        title="Saga orchestrator",
        version="1",
        description="Start sagas and follow them: each runs its steps one after another "
        "on its services, and is undone step by step where one fails. This app's sagas: "
        + ", ".join(s.name for s in saga_app.sagas)
        + ".",
        # with tokens, the documentation is served under one (below), not to anyone
        docs_url=None if tokens.on else "/docs",
        redoc_url=None if tokens.on else "/redoc",
        openapi_url=None if tokens.on else "/openapi.json",
    )
    publisher = celery_publisher(make_app(settings, "api"), settings)
    engine = Engine(settings, saga_app.definitions, publisher, retired=saga_app.retired_definitions)
    install_handlers(app)
    app.state.tokens = tokens
    if tokens.on:
        guarded.documentation(app, tokens)
    else:
        guarded.same_machine_only(app)

    def store() -> Connection:
        return engine.db  # one connection per worker thread of the server

    def submit(saga: Saga, body: bytes, idempotency_key: str | None) -> JSONResponse:
        """Validates the input, stores the saga and starts it. A retry with the same
        ``Idempotency-Key`` (or the same key in the input) returns the first saga."""
        document = parse(body)
        request_key = None
        if idempotency_key is not None:
            request_key = (idempotency_key, saga.request_fingerprint(document))
        try:
            submitted = engine.submit(saga.name, document, request_key)
        except InvalidInput as exc:
            raise Problem(
                422,
                f"Invalid {saga.name}",
                exc.message,
                errors=[{"field": exc.field, "problem": exc.problem}],
            ) from None
        except IdempotencyConflict as exc:
            raise Problem(409, "Idempotency-Key reused", exc.message) from None
        view = engine.get(submitted.saga_id)
        answer: dict[str, Any] = {
            "saga_id": submitted.saga_id,
            "state": view.state.value,
            "created": submitted.created,
            "sent": submitted.sent,
        }
        if not submitted.sent:
            answer["detail"] = (
                f"the {saga.name} is stored; the broker is unreachable, so its first step "
                "waits and is sent when the broker is back"
            )
        return JSONResponse(
            answer, status_code=202, headers={"Location": f"/sagas/{submitted.saga_id}"}
        )

    # One route per saga, so that the OpenAPI document shows each one's input; the order
    # saga's first address, /orders, stays.
    for saga in saga_app.sagas:
        paths = [f"/sagas/{saga.name}", *(["/orders"] if saga.name == "order" else [])]
        for path in paths:
            app.add_api_route(
                path,
                _submit_route(saga, submit),
                methods=["POST"],
                status_code=202,
                summary=f"Start a {saga.name} saga",
                openapi_extra={"requestBody": _request_body(saga)},
            )

    @app.post("/sagas/{saga_name}", status_code=202, include_in_schema=False)
    def post_unknown(_: Writer, saga_name: str) -> None:
        known = ", ".join(s.name for s in saga_app.sagas)
        raise Problem(
            404, "No such saga", f"no saga named {saga_name[:60]!r} (this app has {known})"
        )

    @app.get("/sagas/{saga_id}", summary="One saga: its steps, history and alerts")
    def get_saga(_: Reader, saga_id: str) -> dict[str, Any]:
        return pages.saga_document(store(), saga_id)

    @app.get("/sagas", summary="Sagas, newest first, a page at a time")
    def list_sagas(
        _: Reader,
        state: SagaState | None = None,
        saga: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Sagas, newest first (of one state, of one saga by its name, where asked)."""
        after = _decode_cursor(cursor)
        rows, following = queries.page_sagas(store(), state, limit, after, saga)
        return {
            "sagas": [pages.saga_row(r) for r in rows],
            "next_cursor": _encode_cursor(following) if following else None,
        }

    @app.get("/alerts", summary="Compensations that gave up and wait for a person")
    def list_alerts(_: Reader) -> dict[str, Any]:
        return {"alerts": [a.__dict__ for a in queries.alerts(store())]}

    @app.post("/sagas/{saga_id}/retry", summary="Send a failed saga's given-up compensations again")
    def retry(caller: Operator, saga_id: str) -> dict[str, Any]:
        return {"saga_id": saga_id, "state": engine.retry(saga_id, caller.actor).value}

    @app.post("/sagas/{saga_id}/resolve", summary="Record that a failed saga was settled by hand")
    def resolve(
        caller: Operator,
        saga_id: str,
        body: Annotated[bytes, Depends(limited_body)],
    ) -> dict[str, Any]:
        """The body says how: ``{"note": "refunded by hand, ticket 123"}``."""
        document = parse(body)
        note = document.get("note") if isinstance(document, dict) else None
        if not isinstance(note, str) or not 0 < len(note.strip()) <= MAX_NOTE_LENGTH:
            raise Problem(
                400,
                "Invalid request",
                f"note: say how the saga was settled, in 1 to {MAX_NOTE_LENGTH} characters",
                errors=[{"field": "note", "problem": "a non-empty string is required"}],
            )
        engine.resolve(saga_id, note.strip(), caller.actor)
        return {"saga_id": saga_id, "state": engine.get(saga_id).state.value}

    @app.post("/sagas/{saga_id}/cancel", summary="Stop a saga and undo what took effect")
    def cancel(caller: Operator, saga_id: str) -> dict[str, Any]:
        return {"saga_id": saga_id, "state": engine.cancel(saga_id, caller.actor).value}

    @app.get("/healthz", summary="Whether the broker and the store answer")
    def healthz() -> JSONResponse:
        checks = {"broker": broker.reachable(settings.broker_url), "store": _store_answers(store)}
        ok = all(checks.values())
        return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)

    pages.install(app, store, tokens)
    return app


def _submit_route(
    saga: Saga, submit: Callable[[Saga, bytes, str | None], JSONResponse]
) -> Callable[..., JSONResponse]:
    def post(
        _: Writer,
        body: Annotated[bytes, Depends(limited_body)],
        idempotency_key: Annotated[str | None, Header(max_length=MAX_KEY_LENGTH)] = None,
    ) -> JSONResponse:
        return submit(saga, body, idempotency_key)

    post.__doc__ = (
        f"Validates the {saga.name}'s input, stores its saga and starts it. A retry with the "
        "same ``Idempotency-Key`` (or the same key in the input) returns the first saga."
    )
    return post


def _request_body(saga: Saga) -> dict[str, Any]:
    """The OpenAPI request body of a saga's route: its input's schema (where its input is a
    model) and an example (its first sample, where it has samples)."""
    content: dict[str, Any] = {}
    if saga.schema is not None:
        content["schema"] = saga.schema
    if saga.sample is not None:
        content["example"] = saga.sample(1, random.Random(0))
    return {"required": True, "content": {"application/json": content}}


def _encode_cursor(after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(after).encode()).decode()


def _decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    if cursor is None:
        return None
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        created_at, saga_id = wire.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(created_at, str) or not isinstance(saga_id, str):
            raise TypeError("not two strings")
        return created_at, saga_id
    except (binascii.Error, ValueError, TypeError, MalformedMessage):
        raise Problem(
            400,
            "Bad cursor",
            "cursor must be a next_cursor from an earlier page",
            errors=[{"field": "cursor", "problem": "not a cursor this API gave"}],
        ) from None


def app_from_environment() -> FastAPI:
    """For ``uvicorn saga_tools.web.app:app_from_environment --factory``."""
    from saga_core import config

    return create_app(config.load())


def _store_answers(store: Any) -> bool:
    try:
        return queries.answers(store())
    except SagaError:  # the store cannot even be opened
        return False
