"""JSON off the broker, read within bounds: a bad message is a failure like any other.

Every byte a process takes from a queue passes :func:`loads` before anything reads it: the
Celery envelope on Redis, the task's body on every broker (installed as kombu's JSON
decoder, :func:`install`), the orchestrator's reader. Whatever it refuses raises
:class:`~saga_core.errors.MalformedMessage` naming the problem, never the body, so that the
caller can dead-letter the message and go on with the next one (``saga_core.dead_letters``).

The limits are checked before the text is parsed in full where they can be (the size, the
count of brackets), so a message built to be costly to parse costs little to refuse.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from kombu import serialization
from kombu.utils.json import dumps as kombu_dumps

from saga_core.errors import MalformedMessage

#: The largest message taken off a queue, in bytes: a saga's input is a few kilobytes,
#: and a Celery envelope on Redis carries its body in base64 (a third more).
MAX_BYTES = 1 << 20

#: The deepest nesting of arrays and objects: the contract's own fields go 5 deep (an item
#: of a list inside a payload inside a command), with room for users' payloads.
MAX_DEPTH = 32

#: The largest integer in magnitude: what a JSON number holds exactly everywhere (2**53).
MAX_INT = 1 << 53

_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.IGNORECASE)


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """The JSON value in ``raw``, or :class:`MalformedMessage` if it is larger than
    :data:`MAX_BYTES`, not UTF-8, not JSON, nested deeper than :data:`MAX_DEPTH`, holds NaN
    or an infinity, an integer beyond :data:`MAX_INT`, or a string that is not valid
    Unicode (a lone surrogate escaped as ``\\ud800``)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > MAX_BYTES:
        raise MalformedMessage(f"larger than {MAX_BYTES} bytes ({len(data)})")
    _check_depth(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite
        )
    except MalformedMessage:
        raise
    except RecursionError:  # cannot happen under the depth check; a bound all the same
        raise MalformedMessage(f"nested deeper than {MAX_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError, and int() of too many digits
        raise MalformedMessage(f"not JSON: {str(exc)[:80]}") from None
    if _SURROGATE_ESCAPE.search(data):
        _check_strings(value)
    return value


def _check_depth(data: bytes) -> None:
    # Fewer brackets than the bound cannot nest deeper than it: the common case costs one
    # count in C. Otherwise, brackets outside strings are walked.
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _BRACKETS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise MalformedMessage(f"nested deeper than {MAX_DEPTH}")
        elif token in (b"]", b"}"):
            depth -= 1


def _no_constant(name: str) -> Any:
    raise MalformedMessage(f"{name} is not a JSON number")


def _finite(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):  # 1e999 parses as an infinity
        raise MalformedMessage(f"a number out of range ({digits[:20]})")
    return value


def _bounded_int(digits: str) -> int:
    if len(digits) > 17:  # 2**53 has 16 digits: no need to convert a longer one
        raise MalformedMessage(f"an integer out of range (beyond {MAX_INT})")
    value = int(digits)
    if abs(value) > MAX_INT:
        raise MalformedMessage(f"an integer out of range (beyond {MAX_INT})")
    return value


def _check_strings(value: Any) -> None:
    """Refuse a lone surrogate anywhere in ``value``: it cannot be written as UTF-8, so it
    would fail the first store, log or reply that tried (walked only where the text holds
    an escaped surrogate at all)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _unicode(item)
        elif isinstance(item, dict):
            for k, v in item.items():
                _unicode(k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def _unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedMessage("a string that is not valid Unicode (a lone surrogate)") from None


def finite(value: Any) -> bool:
    """Whether ``value`` is a real number that is neither NaN nor infinite."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def install() -> None:
    """Make :func:`loads` kombu's decoder of ``application/json``, so that every task body
    Celery reads in this process is read within bounds (kombu wraps its errors in its
    ``DecodeError``, which Celery's consumer refuses the message on)."""
    serialization.register(
        "json", kombu_dumps, loads, content_type="application/json", content_encoding="utf-8"
    )
