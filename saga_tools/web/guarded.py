"""What the API serves beyond its routes, and to whom: its documentation under a token,
and without tokens, requests from this machine's own programs only.

Without tokens the API listens on loopback alone (``saga api`` refuses any other address),
but a web page open in a browser on the same machine can still reach loopback: by a simple
cross-site request (a form posting ``text/plain``, which a browser sends without asking the
server first) or by DNS rebinding (a name of the page's own site that resolves to
127.0.0.1, so that the browser lets the page read the answer). So without tokens a request
must name a loopback host in its ``Host`` header, and a request with a body must declare
it ``application/json``, which no page can send to another site without the server's
leave (CORS, which this API never gives).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from saga_core.broker import loopback_host
from saga_tools.web.auth import Tokens, page_readers
from saga_tools.web.problems import Problem

#: Methods whose requests carry a body that changes something.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def documentation(app: FastAPI, tokens: Tokens) -> None:
    """``/docs``, ``/redoc`` and ``/openapi.json`` for a caller whose token may read (the
    header, or the web view's cookie, so that a browser that logged in sees them)."""

    readers_only = page_readers(tokens)

    @app.get("/openapi.json", include_in_schema=False, dependencies=readers_only)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=readers_only)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/redoc", include_in_schema=False, dependencies=readers_only)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=app.title)


def same_machine_only(app: FastAPI) -> None:
    """Refuse a request addressed to a host that is not loopback (421), and a write whose
    body is not declared JSON (415)."""

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        host = _hostname(request.headers.get("host", ""))
        if not loopback_host(host):
            return Problem(
                421,
                "Not this host",
                "without tokens this API answers requests addressed to this machine's "
                "loopback only (localhost, 127.0.0.1 or [::1])",
            ).response(request)
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if request.method in WRITES and media != "application/json":
            return Problem(
                415,
                "Unsupported media type",
                "without tokens this API takes bodies of type application/json only",
            ).response(request)
        return await call_next(request)


def _hostname(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8000`` → ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
