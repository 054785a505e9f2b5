"""Errors as ``application/problem+json`` (RFC 9457), each bad field named."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from saga_core.errors import SagaNotFound, TransientError, TransitionRefused

MEDIA_TYPE = "application/problem+json"

#: Seconds a client is asked to wait before trying again after a 503.
RETRY_AFTER = 1

log = logging.getLogger("saga.api")


class ProblemResponse(JSONResponse):
    """problem+json in ASCII: a detail that echoes what a client sent (a field's name, the
    path) may hold text UTF-8 cannot encode (a lone surrogate), which ASCII escapes."""

    media_type = MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors = status, title, detail, errors
        self.headers = headers

    def response(self, request: Request) -> JSONResponse:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": request.url.path,
        }
        if self.errors:
            body["errors"] = self.errors
        return ProblemResponse(body, status_code=self.status, headers=self.headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request)

    @app.exception_handler(TransientError)
    @app.exception_handler(sqlite3.OperationalError)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        # Expected while the store is locked or its disk fails: a line, not a traceback.
        log.warning("%s %s: the store cannot be written: %s", request.method, request.url.path, exc)
        return Problem(
            503,
            "Store unavailable",
            "the saga store cannot be written just now: try again (the same order_id or "
            "Idempotency-Key never starts a second saga)",
            headers={"Retry-After": str(RETRY_AFTER)},
        ).response(request)

    @app.exception_handler(TransitionRefused)
    async def refused(request: Request, exc: TransitionRefused) -> JSONResponse:
        return Problem(409, "Not allowed now", exc.message).response(request)

    @app.exception_handler(SagaNotFound)
    async def not_found(request: Request, exc: SagaNotFound) -> JSONResponse:
        return Problem(404, "No such saga", exc.message).response(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
                "problem": e["msg"],
            }
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors)
        return Problem(400, "Invalid request", detail, errors).response(request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug of ours: the traceback in the log, and problem+json to the caller all the same
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return Problem(500, "Internal error", "the request failed; see the API's log").response(
            request
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return Problem(exc.status_code, str(exc.detail), str(exc.detail)).response(request)
