"""The two workloads on one running system: bare Celery chains and sagas."""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery, chain

import orchestrator
from bench.chain import done_queue
from bench.chain import queue as chain_queue
from orchestrator.order_saga import ORDER_SAGA
from saga_core.config import Settings
from saga_core.messages import Command, Outcome, Phase, Status
from saga_store import open_reader, queries
from workers import SERVICES
from workers.task import StepRunner


@dataclass
class Run:
    count: int
    seconds: float  # first submit to last completion
    latencies: list[float]
    #: CPU seconds spent meanwhile, by kind of process (where measured)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @classmethod
    def merged(cls, runs: list[Run]) -> Run:
        """Several runs of one kind as one: their counts over their times together."""
        cpu: dict[str, float] = {}
        for r in runs:
            for kind, seconds in r.cpu.items():
                cpu[kind] = cpu.get(kind, 0.0) + seconds
        return cls(
            sum(r.count for r in runs),
            sum(r.seconds for r in runs),
            [t for r in runs for t in r.latencies],
            cpu,
        )

    def summary(self) -> dict[str, Any]:
        cpu = {k: round(v * 1000 / max(self.count, 1), 2) for k, v in self.cpu.items()}
        return {
            **({"cpu_ms_each": {**cpu, "all": round(sum(cpu.values()), 2)}} if cpu else {}),
            "count": self.count,
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p95_ms": round(self.percentile(95) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1) if self.latencies else 0,
        }


def order(tag: str, n: int) -> dict[str, Any]:
    return {
        "order_id": f"{tag}-{n:07d}",
        "customer_email": f"b{n}@example.com",
        "items": [{"sku": "WIDGET", "quantity": 1}],
        "amount_cents": 1000,
        "currency": "EUR",
        "card_number": "4242424242424242",
        "shipping_address": {
            "name": "B",
            "line1": "1 Bench Street",
            "city": "Oslo",
            "postal_code": "0150",
            "country": "NO",
        },
    }


#: The service of each of the order saga's steps, in order.
STEP_SERVICES = [step.queue for step in ORDER_SAGA.steps]


def step_commands(tag: str, n: int) -> list[Command]:
    """The order saga's four step commands for order ``n``, as the orchestrator would send
    them with every step succeeding: what the bare chain and the peers run, through the same
    services' step runners, so that every side does the same work per step."""
    stored, _ = ORDER_SAGA.prepare(order(tag, n))
    outputs = {"create_shipment": {"tracking_number": "TRK-CHAIN"}}
    return [
        Command(
            operation=step.action,
            saga_id=f"{tag}-{n}",
            step=step.name,
            phase=Phase.ACTION,
            attempt=1,
            payload=step.payload(stored, outputs),
            retry=step.retry,
        )
        for step in ORDER_SAGA.steps
    ]


def pace(t0: float, i: int, rate: float | None) -> None:
    if rate:
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the offered load itself


class ChainRunner:
    """Plain Celery chains of the four step tasks (``bench.chain``); the last one replies
    on a queue of ours, read straight from Redis, so that the end of each chain is seen."""

    def __init__(self, app: Celery, settings: Settings):
        self.app, self.settings = app, settings
        self.done_queue = done_queue(settings)
        self.client = redis.Redis.from_url(settings.broker_url)

    def _signatures(self, tag: str, n: int) -> Any:
        commands = step_commands(tag, n)
        return chain(
            *(
                self.app.signature(
                    f"chain.{command.operation}",
                    args=[command.to_wire()],
                    kwargs={"last": command is commands[-1]},
                    immutable=True,
                    queue=chain_queue(self.settings, service),
                )
                for service, command in zip(STEP_SERVICES, commands, strict=True)
            )
        )

    def run(self, tag: str, count: int, rate: float | None = None) -> Run:
        started: dict[str, float] = {}
        finished: dict[str, float] = {}
        reader = threading.Thread(target=self._read, args=(count, finished), daemon=True)
        reader.start()
        t0 = time.monotonic()
        for n in range(count):
            pace(t0, n, rate)
            started[f"{tag}-{n}"] = time.monotonic()
            self._signatures(tag, n).apply_async()
        reader.join(timeout=600)
        latencies = [finished[k] - started[k] for k in finished if k in started]
        last = max(finished.values(), default=t0)
        return Run(len(finished), last - t0, latencies)

    def _read(self, count: int, finished: dict[str, float]) -> None:
        while len(finished) < count:
            # below redis-py's default socket timeout (5 s), which would end a longer wait
            item = self.client.brpop([self.done_queue], timeout=1)
            if item is None:
                continue
            message = json.loads(item[1])
            body = base64.b64decode(message["body"])
            outcome = json.loads(body)[0][0]
            finished[outcome["saga_id"]] = time.monotonic()


def epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp."""
    return datetime.fromisoformat(iso).timestamp()


def submit_and_wait(
    count: int,
    rate: float | None,
    submit: Callable[[int], str],
    ended: Callable[[list[str]], list[tuple[float, float]]],
    timeout: float = 600,
) -> Run:
    """Submit ``count`` workflows (``submit(n)`` returns an id), at ``rate`` per second or
    at once, then wait for them to end: ``ended(ids)`` gives the start and end times
    (seconds since the epoch) of those that have, as the system itself recorded them."""
    ids = []
    t0 = time.monotonic()
    wall0 = time.time()
    for n in range(count):
        pace(t0, n, rate)
        ids.append(submit(n))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = ended(ids)
        if len(rows) == count:
            break
        time.sleep(0.2)  # polling for the workflows' end
    latencies = [finish - start for start, finish in rows]
    last = max((finish for _, finish in rows), default=wall0)
    return Run(len(rows), last - wall0, latencies)


class SagaRunner:
    """Sagas through the orchestrator; each one's time from submit to its terminal state
    is read from the store's history (``queries.ended_spans``)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, tag: str, count: int, rate: float | None = None) -> Run:
        store = open_reader(self.settings.store())
        return submit_and_wait(
            count,
            rate,
            lambda n: orchestrator.submit(order(tag, n), settings=self.settings),
            lambda ids: queries.ended_spans(store, ids),
        )


class Steps:
    """The four services' step runners in one process, for the peers, which call a step as
    a function: runs a command to its outcome's output, or raises where it did not
    succeed."""

    def __init__(self, settings: Settings):
        self.runners = {
            operation: StepRunner(settings, service)
            for service in SERVICES.values()
            for operation in service.operations
        }

    def run(self, command: Command) -> Any:
        result = self.runners[command.operation].run(command, 0)
        if not isinstance(result, Outcome) or result.status is not Status.SUCCEEDED:
            raise RuntimeError(f"{command.key}: {result!r}")
        return result.output
