"""The read-only web view: sagas by state, and one saga's timeline. Server-rendered HTML
that refreshes itself; no front-end build step. Where the API has tokens, a page asks for
one (scope ``sagas:read``) on a form first (``saga_tools.web.auth``)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from saga_core.database import Row
from saga_store import Connection, SagaState, queries
from saga_store.models import client_key, stored_name
from saga_tools import timeline
from saga_tools.web.auth import COOKIE, LoginNeeded, Tokens, page_readers
from saga_tools.web.bodies import MAX_FORM_BYTES, limited

REFRESH_SECONDS = 3

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } code { font-size: 13px; }
.completed { color: #1a7f37; } .compensated { color: #9a6700; } .failed { color: #cf222e; }
.running, .compensating, .pending { color: #0969da; } .alert { color: #cf222e; font-weight: bold; }
nav a { margin-right: 1em; }
"""


def saga_document(conn: Connection, saga_id: str) -> dict[str, Any]:
    """The saga, its steps, its history and its alerts, as data."""
    return timeline.to_dict(*timeline.load(conn, saga_id))


def saga_row(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "saga": stored_name(row["definition"])[0],
        "state": row["state"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "error": row["error"],
    }


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}<p><small>refreshes every {REFRESH_SECONDS} s</small></p></body></html>"
    )


def _login_page(problem: str = "", status: int = 401) -> HTMLResponse:
    note = f"<p class='alert'>{escape(problem)}</p>" if problem else ""
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'><title>Sagas: token</title>"
        f"<style>{STYLE}</style></head><body><h1>Sagas</h1>{note}"
        "<form method='post' action='/ui/login'><label>API token (scope sagas:read) "
        "<input type='password' name='token' autocomplete='off' required></label> "
        "<button>Show the sagas</button></form></body></html>",
        status_code=status,
    )


def install(app: FastAPI, store: Callable[[], Connection], tokens: Tokens) -> None:
    @app.exception_handler(LoginNeeded)
    async def login_needed(request: Request, exc: LoginNeeded) -> HTMLResponse:
        return _login_page(exc.detail)

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> HTMLResponse:
        return _login_page(status=200)

    @app.post("/ui/login", include_in_schema=False)
    async def login(body: Annotated[bytes, Depends(limited(MAX_FORM_BYTES))]) -> Response:
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
        tokens.reader(token, None)  # LoginNeeded, shown as the form again, where it may not
        page = RedirectResponse("/", status_code=303)
        # HttpOnly: no script reads it; Strict: no other site's page sends it
        page.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return page

    readers_only = page_readers(tokens)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=readers_only)
    def index(state: SagaState | None = None, limit: int = 100) -> HTMLResponse:
        conn = store()
        counts = queries.count_by_state(conn)
        links = [f"<a href='/'>all ({sum(counts.values())})</a>"] + [
            f"<a class='{s}' href='/?{urlencode({'state': s.value})}'>{s} ({counts.get(s, 0)})</a>"
            for s in SagaState
        ]
        rows, _ = queries.page_sagas(conn, state, max(1, min(limit, 500)))
        alerts = queries.alerts(conn)
        body = [f"<h1>Sagas{' ' + escape(state.value) if state else ''}</h1>"]
        body.append(f"<nav>{''.join(links)}</nav>")
        if alerts:
            body.append(f"<p class='alert'>{len(alerts)} open alert(s): a compensation gave up</p>")
        body.append(
            "<table><tr><th>id</th><th>saga</th><th>key</th><th>state</th><th>created</th>"
            "<th>why</th></tr>"
        )
        for r in rows:
            body.append(
                f"<tr><td><a href='/ui/sagas/{escape(r['id'])}'><code>{escape(r['id'])}</code></a>"
                f"</td><td>{escape(stored_name(r['definition'])[0])}</td>"
                f"<td>{escape(client_key(r['idempotency_key']) or '')}</td>"
                f"<td class='{escape(r['state'])}'>{escape(r['state'])}</td>"
                f"<td>{escape(r['created_at'])}</td>"
                f"<td>{escape(r['error'] or '')}</td></tr>"
            )
        body.append("</table>")
        return _page("Sagas", "".join(body))

    @app.get(
        "/ui/sagas/{saga_id}",
        response_class=HTMLResponse,
        include_in_schema=False,
        dependencies=readers_only,
    )
    def saga_page(saga_id: str) -> HTMLResponse:
        view, events, alerts = timeline.load(store(), saga_id)
        body = [
            "<nav><a href='/'>all sagas</a></nav>",
            f"<h1>Saga <code>{escape(view.id)}</code></h1>",
            f"<p>{escape(view.definition)} {escape(view.key or '')}: "
            f"<b class='{view.state}'>{escape(view.state.value)}</b>",
        ]
        if view.error:
            body.append(f" — {escape(view.error)}")
        body.append(
            "</p><h2>Steps</h2><table><tr><th>step</th><th>state</th>"
            "<th>sent</th><th>compensation sent</th><th>held by</th><th>error</th></tr>"
        )
        for s in view.steps:
            body.append(
                f"<tr><td>{escape(s.name)}</td><td class='{s.state}'>{escape(s.state.value)}</td>"
                f"<td>{s.attempts}</td><td>{s.compensation_attempts}</td>"
                f"<td>{escape(s.held_by or '')}</td><td>{escape(s.error or '')}</td></tr>"
            )
        body.append("</table>")
        if alerts:
            body.append("<h2>Alerts</h2><ul>")
            for a in alerts:
                status = f"closed: {a.resolution}" if a.resolved_at else "open"
                body.append(
                    f"<li class='alert'>{escape(a.step)}: {escape(a.error)} ({escape(status)})</li>"
                )
            body.append("</ul>")
        body.append("<h2>Timeline</h2><table><tr><th>at (UTC)</th><th>who</th><th>what</th></tr>")
        for e in events:
            body.append(
                f"<tr><td>{escape(e.at)}</td><td>{escape(e.actor)}</td>"
                f"<td class='{e.event.value}'>{escape(timeline.describe(e))}</td></tr>"
            )
        body.append("</table>")
        return _page(f"Saga {view.id}", "".join(body))
