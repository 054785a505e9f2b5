"""Poison: messages as a process on the broker could put them on a queue of the system,
each kind of input a reader must refuse without stopping (docs/security.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import redis

from saga_core import broker, redis_transport
from saga_core.messages import VERSION

#: A well-formed address of a dispatch: what the out-of-range and bad-text kinds bend.
ADDRESS = {"v": VERSION, "saga_id": "poison", "step": "charge_payment", "phase": "action"}


def _task_body(argument: Any) -> bytes:
    return json.dumps([[argument], {}, {}]).encode()


def bodies(task: str) -> dict[str, tuple[str, bytes, dict[str, Any]]]:
    """Each kind of poison for a queue that serves ``task``: its task name, body (the
    Celery message's, ``[args, kwargs, embed]``) and headers of its own."""
    deep = b"[" * 5000 + b"]" * 5000
    outcome = {**ADDRESS, "attempt": 1, "status": "succeeded", "tries": 1, "output": None}
    beat = {
        "v": VERSION,
        "worker": "w@h",
        "pid": 1,
        "services": ["payment"],
        "interval": 1.0,
        "held": [],
    }
    kinds = {
        "not_json": (task, b"this is not JSON {"),
        "not_utf8": (task, b'[["\xff\xfe"], {}, {}]'),
        "deeply_nested": (task, deep),
        "deeply_nested_argument": (task, b"[[" + deep + b"], {}, {}]"),
        "oversized": (task, _task_body("x" * (2 << 20))),
        "out_of_range": (task, _task_body({**outcome, "attempt": 2**64, "pid": 2**64})),
        "count_out_of_range": (task, _task_body({**outcome, "attempt": 2**40})),
        "huge_integer": (task, b"[[" + b"9" * 5000 + b"], {}, {}]"),
        "nan": (task, b'[[{"v": 1, "interval": NaN, "attempt": Infinity}], {}, {}]'),
        "overflowing_float": (task, b'[[{"v": 1, "interval": 1e999}], {}, {}]'),
        "bad_unicode": (task, _task_body({**outcome, "worker": "\ud800"})),
        "wrong_types": (task, json.dumps([{"a": 1}, [], "x"]).encode()),
        "not_an_object": (task, _task_body([1, 2, 3])),
        "unknown_task": ("no.such.task", _task_body({})),
        # a heartbeat as the orchestrator reads one, its numbers out of range
        "heartbeat_pid_out_of_range": (task, _task_body({**beat, "pid": 2**40})),
        "heartbeat_interval_out_of_range": (task, _task_body({**beat, "interval": 1e9})),
        "heartbeat_held_out_of_range": (
            task,
            _task_body({**beat, "held": [{**ADDRESS, "attempt": 2**40}]}),
        ),
    }
    held = _task_body({**outcome, "attempt": 0})
    return {
        **{name: (t, body, {}) for name, (t, body) in kinds.items()},
        # what would hold a worker's memory, or end the process that runs a step
        "far_eta": (task, held, {"eta": "2999-01-01T00:00:00+00:00"}),
        "time_limit": (task, held, {"timelimit": [0.01, 0.01]}),
    }


def envelopes() -> dict[str, bytes]:
    """Each kind of poison that only Redis lets through: what kombu reads before any task."""
    return {
        "envelope_not_json": b"not json at all",
        "envelope_not_an_object": b"[1, 2, 3]",
        "envelope_deeply_nested": b"[" * 5000 + b"]" * 5000,
        "envelope_without_properties": json.dumps({"body": "", "headers": {}}).encode(),
        "envelope_bad_base64": json.dumps(
            {
                "body": "!!!not base64!!!",
                "content-type": "application/json",
                "headers": {"task": "x", "id": "y"},
                "properties": {"delivery_tag": "t", "body_encoding": "base64"},
            }
        ).encode(),
        "envelope_oversized": b'{"body": "' + b"A" * (3 << 20) + b'"}',
    }


def put(url: str, queue: str, task: str, body: bytes, extra: dict[str, Any] | None = None) -> None:
    """Put a Celery-shaped message for ``task`` with this raw ``body`` on ``queue``."""
    headers = {"task": task, "id": str(uuid.uuid4()), "lang": "py", "retries": 0, **(extra or {})}
    if broker.is_amqp(url):
        with broker.amqp_connection(url) as connection:
            connection.Producer().publish(
                body,
                exchange="",
                routing_key=queue,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
            )
        return
    put_raw(url, queue, redis_transport.stored_bytes(queue, headers, {}, body).encode())


def put_raw(url: str, queue: str, raw: bytes) -> None:
    """LPUSH ``raw`` onto the Redis list of ``queue``, as any client of Redis can."""
    client = redis.Redis.from_url(url)
    try:
        client.lpush(queue, raw)
    finally:
        client.close()


def spread(url: str, targets: list[tuple[str, str]], redis_only: bool) -> Callable[[], int]:
    """A function putting every kind of poison on each queue of ``targets`` (a queue and a
    task it serves; a queue may come with several); it returns how many messages it put."""

    def go() -> int:
        n = 0
        for queue, task in targets:
            for name, body, extra in bodies(task).values():
                put(url, queue, name, body, extra)
                n += 1
        if redis_only:
            for queue in dict(targets):
                for raw in envelopes().values():
                    put_raw(url, queue, raw)
                    n += 1
        return n

    return go
