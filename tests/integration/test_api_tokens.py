"""Who may call the HTTP API: a real ``saga api`` with tokens made by ``saga token``, as an
operator sets them up, beside a running system."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga_store import SagaState
from saga_tools.redis_server import free_port
from tests.helpers import make_order
from tests.integration.conftest import System
from tests.integration.test_http_api import Api, serve_api

pytestmark = pytest.mark.processes


class Tokens:
    """Tokens made by ``saga token`` into one file, by name."""

    def __init__(self, path: Path):
        self.path, self.by_name = path, {}

    def make(self, name: str, *scopes: str) -> str:
        argv = [sys.executable, "-m", "saga_tools.cli", "token", name, "--file", str(self.path)]
        for scope in scopes:
            argv += ["--scope", scope]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
        token = done.stdout.strip()
        self.by_name[name] = token
        return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    made = Tokens(tmp_path / "tokens.json")
    made.make("shop", "orders:write")
    made.make("dashboard", "sagas:read")
    made.make("ops", "operator", "sagas:read")
    return made


@pytest.fixture
def api(system: System, tokens: Tokens) -> Iterator[Api]:
    yield from serve_api(system, SAGA_API_TOKENS_FILE=str(tokens.path))


def test_the_tokens_file_holds_no_token(tokens: Tokens) -> None:
    text = tokens.path.read_text()
    assert all(token not in text for token in tokens.by_name.values())
    assert json.loads(text)["ops"]["scopes"] == ["operator", "sagas:read"]
    assert oct(os.stat(tokens.path).st_mode & 0o777) == "0o600"


@pytest.mark.any_broker
def test_a_request_without_a_token_or_without_the_scope_is_refused(
    api: Api, tokens: Tokens, system: System
) -> None:
    order = json.dumps(make_order("T-1")).encode()
    anonymous = api.call("POST", "/orders", order, {"content-type": "application/json"})
    assert anonymous.status == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    unknown = api.call("POST", "/orders", order, bearer("saga_not-a-token"))
    assert unknown.status == 401 and "not one this API knows" in unknown.body["detail"]
    reader = api.call("POST", "/orders", order, bearer(tokens.by_name["dashboard"]))
    assert reader.status == 403 and reader.headers["content-type"] == "application/problem+json"
    assert "'dashboard' does not have scope 'orders:write'" in reader.body["detail"]
    # the refused ones stored nothing; the shop's token places the order
    assert api.call("GET", "/sagas", headers=bearer(tokens.by_name["dashboard"])).body == {
        "sagas": [],
        "next_cursor": None,
    }
    placed = api.call("POST", "/orders", order, bearer(tokens.by_name["shop"]))
    assert placed.status == 202
    # and the shop may not read sagas
    read = api.call(
        "GET", f"/sagas/{placed.body['saga_id']}", headers=bearer(tokens.by_name["shop"])
    )
    assert read.status == 403 and "'sagas:read'" in read.body["detail"]
    assert api.call("GET", "/alerts").status == 401
    assert system.wait(placed.body["saga_id"]).state is SagaState.COMPLETED
    # a token is never written to the log
    assert api.child is not None
    assert all(token not in api.child.log_text() for token in tokens.by_name.values())


@pytest.mark.any_broker
def test_operator_actions_over_http_record_the_tokens_name(
    api: Api, tokens: Tokens, system: System
) -> None:
    ops, dashboard = bearer(tokens.by_name["ops"]), bearer(tokens.by_name["dashboard"])
    # Given a saga whose refund keeps failing, and one whose shipment runs slowly
    stuck = system.submit(
        make_order("T-3"),
        faults={
            "create_shipment": {"fail_business": True},
            "refund_payment": {"fail_transient": 100},
        },
    )
    assert system.wait(stuck).state is SagaState.FAILED
    slow = system.submit(make_order("T-2"), faults={"create_shipment": {"delay_seconds": 5}})
    system.wait_step_running("create_shipment", slow, "create_shipment")
    # When a reader tries to act: refused
    assert api.call("POST", f"/sagas/{slow}/cancel", headers=dashboard).status == 403
    # and an operator cancels the slow one, and retries then settles the stuck one
    cancelled = api.call("POST", f"/sagas/{slow}/cancel", headers=ops)
    assert cancelled.status == 200 and cancelled.body["state"] == "compensating"
    retried = api.call("POST", f"/sagas/{stuck}/retry", headers=ops)
    assert retried.status == 200 and retried.body["state"] == "compensating"
    assert system.wait(stuck).state is SagaState.FAILED  # the refund fails again
    no_note = api.call("POST", f"/sagas/{stuck}/resolve", b"{}", ops)
    assert no_note.status == 400 and no_note.body["errors"][0]["field"] == "note"
    note = json.dumps({"note": "refunded by hand, ticket 7"}).encode()
    resolved = api.call("POST", f"/sagas/{stuck}/resolve", note, ops)
    assert resolved.status == 200, resolved.body
    again = api.call("POST", f"/sagas/{stuck}/cancel", headers=ops)
    assert again.status == 409 and again.headers["content-type"] == "application/problem+json"
    # Then each is in its saga's history under the token's name
    assert system.wait(slow).state is SagaState.COMPENSATED
    history = api.call("GET", f"/sagas/{slow}", headers=dashboard).body["history"]
    by_ops = [(e["event"], e["actor"]) for e in history if e["actor"].startswith("operator")]
    assert by_ops[0] == ("cancel_requested", "operator:ops")
    settled = api.call("GET", f"/sagas/{stuck}", headers=dashboard).body
    by_ops = [(e["event"], e["actor"]) for e in settled["history"] if e["actor"] == "operator:ops"]
    assert by_ops[0] == ("retry_requested", "operator:ops")
    assert by_ops[-1] == ("resolved", "operator:ops")
    assert api.call("GET", "/alerts", headers=dashboard).body == {"alerts": []}


def login(api: Api, token: str) -> http.client.HTTPResponse:
    """The login form posted, its answer read as a browser gets it (redirect not followed)."""
    connection = http.client.HTTPConnection(api.base.removeprefix("http://"), timeout=30)
    body = urllib.parse.urlencode({"token": token})
    headers = {"content-type": "application/x-www-form-urlencoded"}
    connection.request("POST", "/ui/login", body, headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


@pytest.mark.any_broker
def test_the_web_view_asks_for_a_token_that_may_read(api: Api, tokens: Tokens) -> None:
    first = api.call("GET", "/")
    assert first.status == 401 and "<form method='post' action='/ui/login'>" in first.body
    # a token without sagas:read is not let in
    assert login(api, tokens.by_name["shop"]).status == 401
    # the reader's is: kept in a cookie no script reads and no other site sends
    answer = login(api, tokens.by_name["dashboard"])
    assert answer.status == 303 and answer.getheader("location") == "/"
    cookie = answer.getheader("set-cookie") or ""
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    page = api.call("GET", "/", headers={"cookie": cookie.split(";")[0]})
    assert page.status == 200 and "<h1>Sagas</h1>" in page.body
    # the cookie opens the pages only, not the JSON API
    assert api.call("GET", "/sagas", headers={"cookie": cookie.split(";")[0]}).status == 401


@pytest.mark.any_broker
def test_without_tokens_the_api_serves_on_loopback_only(system: System) -> None:
    env = {**os.environ, **system.settings.to_env()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "saga_tools.cli",
            "api",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to serve the API on 0.0.0.0 without tokens" in done.stderr
