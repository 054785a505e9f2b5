"""What the API reads of a request: its body, limited before it is read, and JSON within
``saga_core.wire``'s bounds, refused as problem+json naming what is wrong."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from saga_core import wire
from saga_core.errors import MalformedMessage
from saga_tools.web.problems import Problem

MAX_BODY_BYTES = 1 << 20

#: A login form holds one token: a few dozen bytes.
MAX_FORM_BYTES = 4096


def limited(max_bytes: int) -> Callable[[Request], Awaitable[bytes]]:
    """A dependency reading a request's body, refused (413) as soon as it is larger than
    ``max_bytes``: by its declared length before anything is read, else while it streams."""

    async def body(request: Request) -> bytes:
        too_large = Problem(413, "Body too large", f"the body must be at most {max_bytes} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    return body


limited_body = limited(MAX_BODY_BYTES)


def parse(body: bytes) -> Any:
    """The JSON document of a request's body; a 400 naming what is wrong with it."""
    try:
        return wire.loads(body)
    except MalformedMessage as exc:
        raise Problem(
            400, "Unreadable body", f"the body is {_as_complement(exc.message)}"
        ) from None


def _as_complement(problem: str) -> str:
    # wire's problems read "not JSON: ...", "nested deeper than 32", "a number out of range"
    return problem if problem.startswith(("not ", "a ", "an ", "larger")) else f"{problem}"
