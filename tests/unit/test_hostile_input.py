"""Hostile input, generated: whatever bytes or JSON a sender makes, a reader refuses it with
``MalformedMessage`` (or an order with ``InvalidOrder``) naming the problem, and never
raises anything else: no message can crash the process that reads it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from order_app.order import InvalidOrder, prepare
from saga_core import wire
from saga_core.errors import MalformedMessage
from saga_core.messages import MAX_COUNT, Command, Heartbeat, Outcome, Ping
from saga_core.redis_transport import envelope
from saga_core.signing import Keyring, Refused, new_keys
from tests.helpers import make_order

# Any JSON value, with the numbers and texts a hostile sender would pick.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["\ud800", "\udfff", "a\x00b", "v", "action", "compensation"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
KEYS = [
    "v",
    "saga_id",
    "step",
    "phase",
    "attempt",
    "status",
    "tries",
    "output",
    "error",
    "payload",
    "retry",
    "worker",
    "pid",
    "services",
    "interval",
    "held",
    "refused",
    "reply_to",
    "deadline",
]
# Objects that look like the contract's, with hostile values in its fields.
near_messages = st.dictionaries(st.sampled_from(KEYS), values, max_size=len(KEYS)).map(
    lambda d: {"v": 1, **d} if "v" not in d else d
)
READERS = [
    lambda b: Command.from_wire("charge_payment", b),
    Outcome.from_wire,
    Heartbeat.from_wire,
    Ping.from_wire,
]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused(raw: bytes) -> None:
    try:
        wire.loads(raw)
    except MalformedMessage as exc:
        assert exc.message


@FAST
@given(values)
def test_what_wire_reads_can_be_stored_and_logged(value: Any) -> None:
    # Given any JSON a sender could write
    try:
        read = wire.loads(json_bytes(value))
    except MalformedMessage:
        return
    # Then what passes is text UTF-8 can hold, with finite numbers within bounds
    text = json.dumps(read, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    for number in _numbers(read):
        assert math.isfinite(number)
        assert isinstance(number, float) or abs(number) <= wire.MAX_INT


@FAST
@given(near_messages)
def test_every_reader_refuses_or_reads_a_message_within_bounds(body: dict[str, Any]) -> None:
    raw = json_bytes(body)
    for read in READERS:
        try:
            message = read(wire.loads(raw))
        except MalformedMessage as exc:
            assert exc.message
            continue
        for field in ("attempt", "tries", "pid"):
            if hasattr(message, field):
                assert 1 <= getattr(message, field) <= MAX_COUNT


@FAST
@given(st.binary(max_size=200) | values.map(json_bytes))
def test_an_envelope_on_redis_is_read_or_refused(raw: bytes) -> None:
    try:
        message = envelope(raw)
    except MalformedMessage:
        return
    assert isinstance(message["properties"]["delivery_tag"], str)


@FAST
@given(values)
def test_a_signature_check_refuses_what_it_cannot_read(body: Any) -> None:
    keyring = Keyring(new_keys(["payment"]))
    try:
        keyring.check("outcome", body)
    except Refused as exc:
        assert exc.reason


order_fields = st.dictionaries(
    st.sampled_from([*make_order(), "discount", "\ud800"]), values, max_size=6
)


@FAST
@given(order_fields)
def test_an_order_is_accepted_or_refused_naming_the_field(changes: dict[str, Any]) -> None:
    order = {**make_order(), **changes}
    try:
        wire.loads(json_bytes(order))
    except MalformedMessage:
        return  # never reaches validation
    try:
        saga_input, _ = prepare(order)
    except InvalidOrder as exc:
        assert exc.field
        return
    json.dumps(saga_input, allow_nan=False)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested deeper than 32"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1e999}', "a number out of range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "an integer out of range"),
        (b'{"a": 9007199254740993}', "an integer out of range"),
        (b'{"a": "\\ud800"}', "not valid Unicode"),
        (b'{"\\udfff": 1}', "not valid Unicode"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'"' + b"x" * (wire.MAX_BYTES + 1) + b'"', "larger than"),
        (b"{not json", "not JSON"),
    ],
)
def test_each_bound_names_itself(raw: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage, match=problem):
        wire.loads(raw)


def test_what_is_within_bounds_reads_as_json_does() -> None:
    text = b'{"a": [1, 2.5, "\\ud83d\\ude00", {"b": null}], "c": "\\\\ud800"}'
    assert wire.loads(text) == json.loads(text)
    nested = b"[" * wire.MAX_DEPTH + b"]" * wire.MAX_DEPTH
    assert wire.loads(nested) == json.loads(nested)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []
