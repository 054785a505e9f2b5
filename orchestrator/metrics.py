"""Prometheus metrics of the orchestrator (``saga orchestrator --metrics-port PORT``).

Counts of sagas are read from the store at each scrape, so they survive restarts and
count what every process did (a client starts sagas; operators retry them). Durations and
retries are observed here, as outcomes come in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from saga_core.database import Location
from saga_core.errors import SagaError
from saga_core.messages import Heartbeat, Outcome
from saga_core.middleware import Middleware
from saga_core.signing import REASONS
from saga_store import open_reader, queries
from saga_store.models import SagaState

#: Steps take milliseconds when healthy and up to a step timeout (30 s) when not.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class StoreCollector(Collector):
    """Sagas by state, open alerts and the store's counters, read at scrape time."""

    def __init__(self, store: Location, sagas: Sequence[str] = ()):
        """``sagas``: the app's saga names, shown before they first run."""
        self.store = store
        self.sagas = tuple(sagas)

    def collect(self) -> Iterator[Metric]:
        try:
            # A reader of its own: scrapes come on the HTTP server's own thread.
            conn = open_reader(self.store)
        except (sqlite3.Error, SagaError):  # a store not there yet, or away
            return
        try:
            counters = queries.counters(conn)
            per_saga = queries.by_saga(counters)
            active = queries.active_by_saga(conn)
            alerts = queries.open_alert_count(conn)
        except (sqlite3.Error, SagaError):
            return
        finally:
            conn.close()
        # every saga of the app is shown, with zeros before its first run; what was counted
        # before counters were kept per saga counts for the app's first saga (the only one
        # then, for all but a few)
        if self.sagas:
            for counts in per_saga.values():
                counts[self.sagas[0]] += counts.pop("", 0)
        names = sorted({*self.sagas, *(n for c in per_saga.values() for n in c)} - {""})
        started = CounterMetricFamily(
            "saga_sagas_started", "Sagas stored and started", labels=["saga"]
        )
        for name in names:
            started.add_metric([name], _count(per_saga, "sagas_started", name))
        yield started
        finished = CounterMetricFamily(
            "saga_sagas_finished", "Sagas that reached a final state", labels=["saga", "state"]
        )
        for name in names:
            for state in (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.FAILED):
                count = _count(per_saga, f"sagas_{state.value}", name)
                finished.add_metric([name, state.value], count)
        yield finished
        in_flight = GaugeMetricFamily(
            "saga_sagas_in_flight", "Sagas not yet in a final state", labels=["saga", "state"]
        )
        for name in names:
            for state in (SagaState.PENDING, SagaState.RUNNING, SagaState.COMPENSATING):
                in_flight.add_metric([name, state.value], active[(name, state.value)])
        yield in_flight
        yield GaugeMetricFamily(
            "saga_open_alerts",
            "Compensations that gave up, not yet retried or resolved",
            value=alerts,
        )
        for name, help_text in (
            ("redispatches", "Steps sent again by the sweeper: found lost"),
            ("duplicate_outcomes", "Outcomes ignored: duplicates, late or for a stopped saga"),
        ):
            family = CounterMetricFamily(f"saga_{name}", help_text)
            family.add_metric([], counters.get(name, 0))
            yield family


def _count(per_saga: Mapping[str, Mapping[str, int]], counter: str, saga: str) -> int:
    return per_saga.get(counter, {}).get(saga, 0)


class WorkerRefusals(Collector):
    """The messages service workers refused, by reason, as their latest heartbeats count
    them (a worker counts from its start; a restarted one starts again from zero, which
    Prometheus reads as a counter reset)."""

    #: Workers remembered: heartbeats name their sender, and with signing off anyone can
    #: send one, so the table is bounded (the oldest is forgotten first).
    MOST = 1024

    def __init__(self) -> None:
        self.latest: dict[tuple[str, int], dict[str, int]] = {}

    def record(self, beat: Heartbeat) -> None:
        self.latest.pop((beat.worker, beat.pid), None)
        self.latest[(beat.worker, beat.pid)] = {
            r: n for r, n in beat.refused.items() if r in REASONS
        }
        while len(self.latest) > self.MOST:
            del self.latest[next(iter(self.latest))]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "saga_worker_messages_refused",
            "Commands the service workers refused unread (unsigned, forged, expired, malformed)",
            labels=["reason"],
        )
        for reason in REASONS:
            family.add_metric([reason], sum(c.get(reason, 0) for c in list(self.latest.values())))
        yield family


class DeadLetterCollector(Collector):
    """How many refused messages the dead letters keep (``saga dead-letters``), read from
    the broker at scrape time: a number to alert on when it grows."""

    def __init__(self, depth: Callable[[], int | None]):
        self.depth = depth

    def collect(self) -> Iterator[Metric]:
        kept = self.depth()
        if kept is not None:  # the broker away: no figure rather than a wrong one
            yield GaugeMetricFamily(
                "saga_dead_letters", "Refused messages kept as dead letters", value=kept
            )


class Metrics(Middleware):
    """What the orchestrator observes as outcomes come in: a middleware of its engine."""

    def __init__(
        self,
        store: Location,
        registry: CollectorRegistry | None = None,
        dead_letters: Callable[[], int | None] | None = None,
        sagas: Sequence[str] = (),
    ):
        self.registry = registry or CollectorRegistry()
        self.registry.register(StoreCollector(store, sagas))
        if dead_letters is not None:
            self.registry.register(DeadLetterCollector(dead_letters))
        self.durations = Histogram(
            "saga_step_duration_seconds",
            "From a step's (or compensation's) dispatch to its outcome",
            ["step", "phase", "status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "saga_messages_refused",
            "Messages the orchestrator refused unread (unsigned, forged, expired, malformed)",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.worker_refusals = WorkerRefusals()
        self.registry.register(self.worker_refusals)
        self.retries = Counter(
            "saga_step_retries",
            "Retries inside the services (runs beyond the first) of answered dispatches",
            ["step", "phase"],
            registry=self.registry,
        )

    def after_outcome(self, outcome: Outcome, took: float | None) -> None:
        step, phase = outcome.step, outcome.phase.value
        if took is not None:
            self.durations.labels(step, phase, outcome.status.value).observe(max(took, 0.0))
        if outcome.tries > 1:
            self.retries.labels(step, phase).inc(outcome.tries - 1)

    def refused(self, kind: str, reason: str) -> None:
        self.refusals.labels(kind, reason).inc()

    def after_heartbeat(self, beat: Heartbeat) -> None:
        self.worker_refusals.record(beat)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, host, registry=self.registry)
