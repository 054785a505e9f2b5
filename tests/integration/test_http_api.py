"""The HTTP API over real HTTP: a real ``saga api`` process beside a running system."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from saga_core.config import Settings
from saga_core.processes import wait_for
from saga_store import SagaState
from saga_tools import redis_server
from saga_tools.cluster import Child, saga_command
from saga_tools.redis_server import free_port
from tests.helpers import make_order, service_records
from tests.integration.conftest import System

pytestmark = pytest.mark.processes

DECLINED = "4000000000000002"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Api:
    def __init__(self, port: int, child: Child | None = None):
        self.base = f"http://127.0.0.1:{port}"
        self.child = child

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return self._reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return self._reply(error.code, error.headers, error.read())

    @staticmethod
    def _reply(status: int, headers: Any, raw: bytes) -> Reply:
        kind = headers.get("content-type", "")
        body = json.loads(raw) if "json" in kind else raw.decode()
        return Reply(status, {k.lower(): v for k, v in headers.items()}, body)

    def post_order(self, order: Any, key: str | None = None) -> Reply:
        headers = {"content-type": "application/json"}
        if key:
            headers["idempotency-key"] = key
        return self.call("POST", "/orders", json.dumps(order).encode(), headers)

    def ready(self) -> bool:
        try:
            return self.call("GET", "/healthz").status == 200
        except OSError:
            return False


def serve_api(
    target: System | Settings, client: type[Api] | None = None, **env_changes: str
) -> Iterator[Api]:
    """A ``saga api`` process beside ``target`` (a system, or the settings of one), with
    its settings (and ``env_changes``), until the test ends."""
    settings = target if isinstance(target, Settings) else target.settings
    port = free_port()
    env = {**settings.to_env(), "PYTHONUNBUFFERED": "1", **env_changes}
    child = Child(
        "api",
        saga_command("api", "--port", str(port)),
        env,
        settings.data_dir / "logs" / "api.log",
    ).start()
    api = (client or Api)(port, child)
    try:
        wait_for(api.ready, 30, "the API to answer")
        yield api
    finally:
        child.stop()
        print(child.log_text()[-3000:])


@pytest.fixture
def api(system: System) -> Iterator[Api]:
    yield from serve_api(system)


def wait_terminal(system: System, saga_id: str) -> SagaState:
    return system.wait(saga_id).state


@pytest.mark.any_broker
def test_post_order_starts_a_saga_and_a_retry_returns_it(api: Api, system: System) -> None:
    first = api.post_order(make_order("H-1"), key="key-H-1")
    assert first.status == 202, first.body
    saga_id = first.body["saga_id"]
    assert first.headers["location"] == f"/sagas/{saga_id}" and first.body["created"] is True
    # the client's retry, by its key or by the order_id, starts nothing new
    again = api.post_order(make_order("H-1"), key="key-H-1")
    assert (again.status, again.body["saga_id"], again.body["created"]) == (202, saga_id, False)
    same_order = api.post_order(make_order("H-1"))
    assert same_order.body["saga_id"] == saga_id
    reused = api.post_order(make_order("H-2"), key="key-H-1")
    assert reused.status == 409 and reused.headers["content-type"] == "application/problem+json"
    assert wait_terminal(system, saga_id) is SagaState.COMPLETED
    assert service_records(system.data_dir, "H-1")["charges"] == 1
    assert service_records(system.data_dir, "H-2")["charges"] == 0

    saga = api.call("GET", f"/sagas/{saga_id}")
    assert saga.status == 200 and saga.body["state"] == "completed"
    assert [s["state"] for s in saga.body["steps"]] == ["completed"] * 4
    assert saga.body["history"][0]["event"] == "created"
    assert saga.body["history"][-1]["event"] == "completed"


@pytest.mark.any_broker
def test_pages_of_sagas_and_the_alerts(api: Api, system: System) -> None:
    ids = [api.post_order(make_order(f"P-{n}")).body["saga_id"] for n in range(5)]
    declined = api.post_order(make_order("P-9", card_number=DECLINED)).body["saga_id"]
    for saga_id in [*ids, declined]:
        wait_terminal(system, saga_id)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        path = "/sagas?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.call("GET", path).body
        seen.extend(s["id"] for s in page["sagas"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([*ids, declined]) and len(seen) == 6  # each once
    compensated = api.call("GET", "/sagas?state=compensated").body["sagas"]
    assert [s["id"] for s in compensated] == [declined]
    assert api.call("GET", "/alerts").body == {"alerts": []}


@pytest.mark.any_broker
@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        (b"{not json", {}, 400, None),
        (json.dumps(make_order(amount_cents="12")).encode(), {}, 422, "amount_cents"),
        (json.dumps(make_order(items=[])).encode(), {}, 422, "items"),
        (json.dumps({**make_order(), "coupon": "X"}).encode(), {}, 422, "coupon"),
    ],
    ids=["broken JSON", "amount as text", "no items", "unknown field"],
)
def test_bad_orders_are_problems_naming_the_field_and_store_nothing(
    api: Api, system: System, body: bytes, headers: dict[str, str], status: int, field: str | None
) -> None:
    reply = api.call("POST", "/orders", body, {"content-type": "application/json", **headers})
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.body["status"] == status and reply.body["detail"]
    if field:
        assert reply.body["errors"][0]["field"] == field
    assert api.call("GET", "/sagas").body["sagas"] == []


@pytest.mark.any_broker
def test_a_body_too_large_is_refused_before_it_is_read(api: Api) -> None:
    # Only the headers go out: the API answers from the declared length alone.
    connection = http.client.HTTPConnection(api.base.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/orders")
    connection.putheader("content-type", "application/json")
    connection.putheader("content-length", str((1 << 20) + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert response.getheader("content-type") == "application/problem+json"
    assert "at most 1048576 bytes" in json.loads(response.read())["detail"]
    connection.close()
    assert api.call("GET", "/sagas").body["sagas"] == []


@pytest.mark.any_broker
def test_unknown_saga_bad_query_health_and_docs(api: Api) -> None:
    missing = api.call("GET", "/sagas/no-such-saga")
    assert missing.status == 404 and missing.headers["content-type"] == "application/problem+json"
    assert "no-such-saga" in missing.body["detail"]
    bad_state = api.call("GET", "/sagas?state=done")
    assert bad_state.status == 400 and bad_state.body["errors"][0]["field"] == "state"
    bad_cursor = api.call("GET", "/sagas?cursor=!!!")
    assert bad_cursor.status == 400 and bad_cursor.body["errors"][0]["field"] == "cursor"
    assert api.call("GET", "/healthz").body == {"ok": True, "broker": True, "store": True}
    docs = api.call("GET", "/docs")
    assert docs.status == 200 and "swagger" in docs.body.lower()
    spec = api.call("GET", "/openapi.json").body
    paths = {"/orders", "/sagas/order", "/sagas", "/sagas/{saga_id}", "/alerts", "/healthz"}
    assert paths <= set(spec["paths"])


def test_orders_posted_while_the_broker_is_down_are_stored_and_end(
    make_system: Callable[..., System], own_redis: redis_server.OwnedRedis, redis_only: None
) -> None:
    system = make_system(broker_url=own_redis.url)
    api = contextlib.contextmanager(serve_api)(system)
    one = [{"sku": "WIDGET", "quantity": 1}]
    with api as client:
        before = [client.post_order(make_order(f"D-{n}", items=one)) for n in range(3)]
        # When Redis dies (losing every queued message) while orders come in, each posted once
        port = own_redis.port
        own_redis.stop(hard=True)
        during = [client.post_order(make_order(f"D-{n}", items=one)) for n in range(3, 9)]
        own_redis.start(port)
        after = [client.post_order(make_order(f"D-{n}", items=one)) for n in range(9, 10)]
        log = client.child.log_text() if client.child else ""
    # Then every order is accepted: stored, and said to wait where the broker was down
    replies = before + during + after
    assert [r.status for r in replies] == [202] * 10, [r.body for r in replies]
    assert all(r.body["sent"] is False and "stored" in r.body["detail"] for r in during)
    assert all(r.body["sent"] is True for r in before + after)
    # and each one ends, with every effect once; the API logged the outage, no traceback
    for n, reply in enumerate(replies):
        assert system.wait(reply.body["saga_id"], timeout=90).state is SagaState.COMPLETED
        assert service_records(system.data_dir, f"D-{n}")["charges"] == 1
    assert "broker unreachable" in log
    assert "Traceback" not in log and "Exception in ASGI application" not in log


@pytest.mark.any_broker
def test_a_store_that_cannot_be_written_is_a_503_with_retry_after(api: Api, system: System) -> None:
    # Given another process holding the store's write lock past the API's busy timeout
    lock = sqlite3.connect(system.data_dir / "sagas.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        reply = api.post_order(make_order("W-1"))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Then the client is told to come back, as a problem, and nothing was stored
    assert reply.status == 503, reply.body
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.body["title"] == "Store unavailable"
    again = api.post_order(make_order("W-1"))
    assert (again.status, again.body["created"]) == (202, True)
    assert wait_terminal(system, again.body["saga_id"]) is SagaState.COMPLETED
    log = api.child.log_text() if api.child else ""
    assert "Traceback" not in log and "the store cannot be written" in log
