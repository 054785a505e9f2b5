"""Hostile input to a real ``saga api``: whatever a client sends is answered 4xx as
problem+json, never 500, and stores nothing; bodies are limited before they are read; the
documentation needs a token where tokens are configured; without tokens, only requests
from this machine's own programs are taken (no cross-site form, no DNS rebinding)."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_core.config import Settings
from saga_store import open_store, queries
from tests.helpers import make_order
from tests.integration.test_api_tokens import Tokens
from tests.integration.test_http_api import Api, Reply, serve_api

pytestmark = [pytest.mark.processes, pytest.mark.any_broker]

JSON = {"content-type": "application/json"}
DEEP = b"[" * 5000 + b"]" * 5000


class Hostile(Api):
    def raw(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> Reply:
        """A request exactly as given (http.client sends what urllib would tidy); a
        ``chunked`` body declares no length."""
        headers = headers or {}
        connection = http.client.HTTPConnection(self.base.removeprefix("http://"), timeout=30)
        try:
            connection.putrequest(method, path, skip_host="host" in headers)
            for name, value in headers.items():
                connection.putheader(name, value)
            if chunked:
                connection.putheader("transfer-encoding", "chunked")
                connection.endheaders(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                if "content-length" not in headers:
                    connection.putheader("content-length", str(len(body)))
                connection.endheaders(body)
            response = connection.getresponse()
            return self._reply(response.status, response.headers, response.read())
        finally:
            connection.close()


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    yield from serve_api(settings, Hostile)


@pytest.fixture
def with_tokens(settings: Settings, tmp_path: Path) -> Iterator[tuple[Hostile, Tokens]]:
    tokens = Tokens(tmp_path / "tokens.json")
    tokens.make("shop", "orders:write")
    tokens.make("dashboard", "sagas:read")
    for api in serve_api(settings, Hostile, SAGA_API_TOKENS_FILE=str(tokens.path)):
        assert isinstance(api, Hostile)
        yield api, tokens


def problem(reply: Reply, status: int) -> str:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/problem+json", reply
    return str(reply.body["detail"])


def nothing_stored(settings: Settings) -> bool:
    return queries.list_sagas(open_store(settings.store())) == []


def cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (DEEP, "nested deeper than 32"),
        (b'{"order_id": "A", "amount_cents": ' + b"9" * 5000 + b"}", "integer out of range"),
        (b'{"\\ud800": 1}', "not valid Unicode"),
        (b'{"order_id": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
    ],
    ids=[
        "deeply nested",
        "5000 digits",
        "lone surrogate in a field name",
        "NaN",
        "bytes",
        "broken",
    ],
)
def test_a_hostile_body_is_refused_naming_the_problem(
    api: Hostile, settings: Settings, body: bytes, names: str
) -> None:
    assert names in problem(api.raw("POST", "/orders", body, JSON), 400)
    assert nothing_stored(settings)


@pytest.mark.parametrize(
    "value",
    [
        cursor(DEEP),
        cursor(b"[" + b"9" * 5000 + b', "x"]'),
        cursor(b'["\\ud800", "x"]'),
        "x" * 5000,
        "%ff%fe",
        cursor(b"[1, 2]"),
    ],
    ids=["deeply nested", "5000 digits", "lone surrogate", "long", "bytes", "numbers"],
)
def test_a_hostile_cursor_is_refused(api: Hostile, value: str) -> None:
    assert "cursor" in problem(api.raw("GET", f"/sagas?cursor={value}"), 400)


def test_a_huge_login_body_is_refused_before_it_is_read(
    with_tokens: tuple[Hostile, Tokens],
) -> None:
    api, _ = with_tokens
    form = {"content-type": "application/x-www-form-urlencoded"}
    # by its declared length, with nothing of it sent
    declared = api.raw("POST", "/ui/login", b"", {**form, "content-length": str(20 << 20)})
    assert "at most 4096 bytes" in problem(declared, 413)
    # and by what streams in, where no length is declared
    chunked = api.raw("POST", "/ui/login", b"token=" + b"x" * 10_000, form, chunked=True)
    assert "at most 4096 bytes" in problem(chunked, 413)


def test_the_documentation_needs_a_token_where_tokens_are_configured(
    with_tokens: tuple[Hostile, Tokens],
) -> None:
    api, tokens = with_tokens
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert api.raw("GET", path).status == 401, path
        reader = {"authorization": f"Bearer {tokens.by_name['dashboard']}"}
        assert api.raw("GET", path, headers=reader).status == 200, path
    spec = api.raw("GET", "/openapi.json", headers=reader).body
    assert "/orders" in spec["paths"]


def test_without_tokens_only_this_machine_s_programs_are_served(
    api: Hostile, settings: Settings
) -> None:
    order = json.dumps(make_order("X-1")).encode()
    # a page of another site posts a simple cross-site request
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        assert "application/json only" in problem(
            api.raw("POST", "/orders", order, {"content-type": kind}), 415
        )
    # a page of another site reaches loopback under a name of its own (DNS rebinding)
    for host in ("attacker.example", "attacker.example:8000", "10.0.0.7"):
        rebound = api.raw("GET", "/sagas", headers={"host": host})
        assert "loopback only" in problem(rebound, 421)
    assert nothing_stored(settings)
    # while this machine's programs are served, under every loopback name
    port = api.base.rpartition(":")[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert api.raw("GET", "/sagas", headers={"host": host}).status == 200, host
    assert api.raw("GET", "/openapi.json").status == 200
    assert api.raw("POST", "/orders", order, JSON).status == 202


# Whatever JSON, whatever bytes: 4xx problem+json, never 500, nothing stored.
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
order_like = st.dictionaries(
    st.sampled_from([*make_order(), "discount", "\ud800"]), values, max_size=7
).map(lambda changes: {**make_order(), **changes})
bodies = (
    st.binary(max_size=200)
    | values.map(lambda v: json.dumps(v).encode())
    | order_like.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, cursor_value=st.text(max_size=40))
def test_no_input_gets_a_500(api: Hostile, body: bytes, cursor_value: str) -> None:
    reply = api.raw("POST", "/orders", body, JSON)
    assert reply.status < 500, reply
    if reply.status >= 400:
        assert reply.headers["content-type"] == "application/problem+json", reply
    listed = api.raw("GET", "/sagas?" + _query(cursor_value))
    assert listed.status < 500, listed


def _query(text: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"cursor": text})
