"""The HTTP API's tokens file (``SAGA_API_TOKENS_FILE``; ``saga token`` adds to it): who
may call the API, with which scopes. It holds the SHA-256 of each token, never a token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from saga_core.config import PREFIX, Settings, json_object
from saga_core.errors import ConfigError

VARIABLE = PREFIX + "API_TOKENS_FILE"

#: What an HTTP API token may be allowed to do (docs/security.md).
API_SCOPES = ("orders:write", "sagas:read", "operator")

#: What a token's name may be: it is recorded as an actor and shown in logs.
TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


@dataclass(frozen=True)
class ApiToken:
    """A caller of the HTTP API: its name (recorded as the actor of what it does), the
    SHA-256 of its token (the file holds no token a reader could use) and its scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]


def tokens_file(settings: Settings) -> str:
    """The tokens file the settings name; empty: none (the API serves on loopback only)."""
    return settings.above.get(VARIABLE, "").strip()


def api_tokens(settings: Settings, may_be_missing: bool = False) -> dict[str, ApiToken]:
    """The tokens of the settings' tokens file; none where it names none. A file that does
    not exist is a ``ConfigError``, unless ``may_be_missing`` (``saga token`` makes it)."""
    path = tokens_file(settings)
    if not path or (may_be_missing and not Path(path).exists()):
        return {}
    return read_api_tokens(path)


def read_api_tokens(path: str) -> dict[str, ApiToken]:
    """The tokens of ``path``: ``{"name": {"sha256": "<hex>", "scopes": ["sagas:read"]}}``."""
    data = json_object(VARIABLE, path, "an object of tokens by name")
    tokens = {}
    for token_name, entry in data.items():
        where = f"{VARIABLE}: token {token_name!r:.70}"
        if not TOKEN_NAME.fullmatch(token_name):
            raise ConfigError(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 _ . @ -")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "scopes"}:
            raise ConfigError(f"{where}: must be an object with sha256 and scopes")
        digest, scopes = entry["sha256"], entry["scopes"]
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"{where}: sha256 must be 64 lowercase hex digits")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in API_SCOPES for s in scopes)
        ):
            raise ConfigError(f"{where}: scopes must be a list of {', '.join(API_SCOPES)}")
        tokens[token_name] = ApiToken(token_name, digest, frozenset(scopes))
    return tokens
