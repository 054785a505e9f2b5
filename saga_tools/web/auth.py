"""Who may call the HTTP API: bearer tokens, each with a name and scopes (docs/security.md).

- ``orders:write``: start sagas (``POST /orders``, ``POST /sagas/{name}``);
- ``sagas:read``: read sagas, their history and the alerts, and the web view;
- ``operator``: retry, resolve and cancel a saga, recorded in its history under the
  token's name.

The API keeps the SHA-256 of each token, never the token, and compares digests in constant
time. A request without a valid token is answered 401, one whose token lacks the scope 403,
both as problem+json. Without configured tokens every request is allowed, and the API
serves on loopback only (``saga api`` refuses any other address).

The web view is read by a browser, which cannot send a bearer header on a link: it asks
for a token once, on a form, and keeps it in a cookie that only the pages read (the JSON
API takes the header alone, so a page of another site cannot act through the cookie).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Cookie, Depends, Header

from saga_tools.tokens import ApiToken
from saga_tools.web.problems import Problem

#: The cookie the web view keeps a token in.
COOKIE = "saga_token"


@dataclass(frozen=True)
class Caller:
    """Who made a request: a token's name, or None where the API runs without tokens."""

    name: str | None

    @property
    def actor(self) -> str:
        """What an operator action by this caller is recorded as in a saga's history."""
        return f"operator:{self.name or 'api'}"


class LoginNeeded(Exception):
    """A page of the web view asked for without a token that may read it."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Tokens:
    def __init__(self, tokens: Mapping[str, ApiToken]):
        self.tokens = tuple(tokens.values())

    @property
    def on(self) -> bool:
        return bool(self.tokens)

    def find(self, token: str) -> ApiToken | None:
        """The configured token ``token`` is, if any: every digest is compared, each in
        constant time, so the time taken tells nothing of how close a guess came."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for candidate in self.tokens:
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        return found

    def caller(self, authorization: str | None, scope: str) -> Caller:
        """The caller of a JSON request with header ``authorization``, allowed ``scope``;
        a 401 or 403 :class:`Problem` otherwise."""
        if not self.on:
            return Caller(None)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "Unauthorized",
                "this API needs a token: send the header Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="saga"'},
            )
        return self._allowed(self.find(token.strip()), scope)

    def reader(self, cookie: str | None, authorization: str | None) -> Caller:
        """The caller of a web view page: from the cookie the login form set, or the
        header; :class:`LoginNeeded` where neither holds a token that may read."""
        if not self.on:
            return Caller(None)
        token = cookie or (authorization or "").partition(" ")[2]
        found = self.find(token.strip()) if token and token.strip() else None
        if found is None:
            raise LoginNeeded("a token with scope sagas:read is needed to see the sagas")
        if "sagas:read" not in found.scopes:
            raise LoginNeeded(f"token {found.name!r} does not have scope sagas:read")
        return Caller(found.name)

    @staticmethod
    def _allowed(found: ApiToken | None, scope: str) -> Caller:
        if found is None:
            raise Problem(
                401,
                "Unauthorized",
                "the token is not one this API knows",
                headers={"WWW-Authenticate": 'Bearer realm="saga", error="invalid_token"'},
            )
        if scope not in found.scopes:
            raise Problem(
                403,
                "Forbidden",
                f"token {found.name!r} does not have scope {scope!r}, which this needs",
                headers={"WWW-Authenticate": f'Bearer realm="saga", scope="{scope}"'},
            )
        return Caller(found.name)


def page_readers(tokens: Tokens) -> list[Any]:
    """The dependencies of a page a browser reads (the web view, the documentation): a
    token that may read, from the login form's cookie or the header."""

    def reader(
        saga_token: Annotated[str | None, Cookie(alias=COOKIE)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        return tokens.reader(saga_token, authorization)

    return [Depends(reader)]
