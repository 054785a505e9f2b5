"""The two workloads on one running system: bare Celery chains and sagas."""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery, chain

import saga_app
from bench import clock
from bench.chain import done_queue
from bench.chain import queue as chain_queue
from bench.clock import Ends
from order_app import ORDER_SAGA
from order_app import app as order_app
from saga_core.config import Settings
from saga_core.messages import Command, Outcome, Phase, Status
from saga_store import open_reader, queries
from workers.task import StepRunner


@dataclass
class Run:
    count: int
    seconds: float  # first hand-over to the last end its client saw
    #: each workflow's, by the bench's one clock (``bench.clock``)
    latencies: list[float]
    #: CPU seconds spent meanwhile, by kind of process (where measured)
    cpu: dict[str, float] = field(default_factory=dict)
    #: each workflow's as the system records it itself (a saga's history, celery-saga's
    #: record, a DBOS call's return), where that differs: the clock of earlier figures
    recorded: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float, recorded: bool = False) -> float:
        return percentile(self.recorded if recorded else self.latencies, p)

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
            [t for r in runs for t in r.recorded],
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
            **(
                {
                    "recorded_p50_ms": round(self.percentile(50, recorded=True) * 1000, 1),
                    "recorded_p95_ms": round(self.percentile(95, recorded=True) * 1000, 1),
                }
                if self.recorded
                else {}
            ),
        }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


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
    on a queue of ours, which the bench's reader drains, so that the end of each chain is
    seen."""

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
        def submit(n: int) -> str:
            self._signatures(tag, n).apply_async()
            return f"{tag}-{n}"

        return submit_and_wait("the chains", count, rate, submit, self._drain)

    def _drain(self, pending: list[str]) -> list[str]:
        """The chains whose reply has come, taken off the reply queue at once."""
        with self.client.pipeline(transaction=True) as both:
            both.lrange(self.done_queue, 0, -1)
            both.delete(self.done_queue)
            replies, _ = both.execute()
        ended = []
        for raw in replies:
            body = base64.b64decode(json.loads(raw)["body"])
            ended.append(json.loads(body)[0][0]["saga_id"])
        return ended


def epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp."""
    return datetime.fromisoformat(iso).timestamp()


def submit_and_wait(
    what: str,
    count: int,
    rate: float | None,
    submit: Callable[[int], str],
    ended: Callable[[list[str]], Iterable[str]],
    recorded: Callable[[list[str]], list[tuple[float, float]]] | None = None,
    timeout: float = 600,
) -> Run:
    """Hand over ``count`` workflows (``submit(n)`` returns an id), at ``rate`` per second
    or at once, each timed by the one clock (``bench.clock``) from just before ``submit``
    to the moment the reader sees it in ``ended(pending)``; ``recorded(ids)``, where given,
    gives the start and end (seconds since the epoch) each one's system recorded itself.
    :class:`~bench.clock.BenchTimeout` where they have not all ended in ``timeout``."""
    ids = []
    with Ends(what, ended, clock.AT_LOAD if rate else clock.SATURATED) as ends:
        t0 = time.monotonic()
        for n in range(count):
            pace(t0, n, rate)
            at = time.monotonic()
            key = submit(n)
            ends.handed(key, at)
            ids.append(key)
        ends.wait(count, timeout)
    run = Run(count, ends.last(t0) - t0, ends.latencies())
    if recorded is not None:
        run.recorded = [finish - start for start, finish in recorded(ids)]
    return run


class SagaRunner:
    """Sagas through the orchestrator, seen ended by the reader in the store (a terminal
    state); each one's span in its history is the recorded figure
    (``queries.ended_spans``)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, tag: str, count: int, rate: float | None = None) -> Run:
        store = open_reader(self.settings.store())
        try:
            return submit_and_wait(
                "the sagas",
                count,
                rate,
                lambda n: saga_app.submit(order(tag, n), settings=self.settings),
                lambda pending: queries.ended_ids(store, pending),
                lambda ids: queries.ended_spans(store, ids),
            )
        finally:
            store.close()


class Steps:
    """The four services' step runners in one process, for the peers, which call a step as
    a function: runs a command to its outcome's output, or raises where it did not
    succeed."""

    def __init__(self, settings: Settings):
        self.runners = {
            operation: StepRunner(settings, service)
            for service in order_app.services
            for operation in service.operations
        }

    def run(self, command: Command) -> Any:
        result = self.runners[command.operation].run(command, 0)
        if not isinstance(result, Outcome) or result.status is not Status.SUCCEEDED:
            raise RuntimeError(f"{command.key}: {result!r}")
        return result.output
