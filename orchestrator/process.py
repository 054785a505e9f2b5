"""The orchestrator process: a Celery worker on the ``orchestrator`` queue, plus recovery
at start and a sweeper thread while it runs.

Outcomes are handled one at a time (solo pool) and acknowledged after their transition
committed, so a crash redelivers the outcome and the store's refusal of a repeated
transition makes the redelivery harmless.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

from orchestrator.engine import Engine, Publisher
from orchestrator.order_saga import ORDER_SAGA
from saga import watchdog
from saga.broker import QueueDepth
from saga.celery_app import OUTCOME_TASK, SUBMIT_TASK, direct, make_app
from saga.config import ORCHESTRATOR_QUEUE, Settings
from saga.errors import InvalidOrder, TransientError
from saga.periodic import Periodic

log = logging.getLogger("saga.orchestrator")

DEFINITIONS = {ORDER_SAGA.name: ORDER_SAGA}


def celery_publisher(app: Celery, settings: Settings) -> Publisher:
    def publish(task: str, queue: str, kwargs: dict[str, Any]) -> None:
        # Empty reprs: Celery would otherwise render the payload into the message headers,
        # a fifth of the cost of a publish (profiled), and a copy of order data in logs.
        app.send_task(
            task, kwargs=kwargs, queue=direct(settings.queue(queue)), argsrepr="", kwargsrepr=""
        )

    return publish


class Sweeper:
    """Runs :meth:`Engine.sweep` on each tick (every ``interval`` seconds, see ``build``).

    While outcomes wait on the orchestrator's own queue (``backlog``), it holds off: the
    outcome a deadline waits for is most likely among them, and re-dispatching then would
    only add duplicate work to a system already behind (seen in chaos runs: a restarted
    orchestrator's backlog turned into a storm of re-dispatches).
    """

    def __init__(self, engine: Engine, interval: float, backlog: Callable[[], int] = lambda: 0):
        self.engine, self.interval, self.backlog = engine, interval, backlog

    def tick(self) -> int:
        """One sweep, unless outcomes are waiting; returns how many steps it handled."""
        try:
            return self.engine.sweep() if self.backlog() == 0 else 0
        except Exception:  # the sweeper must outlive a passing broker or database fault
            log.exception("sweep failed; trying again in %.1fs", self.interval)
            return 0


def outcome_backlog(broker_url: str, queue: str) -> Callable[[], int]:
    """Messages waiting on ``queue``; 0 where the broker does not answer (sweep then)."""
    depth = QueueDepth(broker_url, [queue])
    return lambda: depth() or 0


def build(settings: Settings) -> tuple[Celery, Engine]:
    """The orchestrator's Celery app with its tasks and its recovery-and-sweeper bootstep."""
    app = make_app(settings, "orchestrator")
    engine = Engine(settings, DEFINITIONS, celery_publisher(app, settings), crash_points=True)

    # A store locked for longer than its busy timeout is retried, not dropped: a dropped
    # outcome would cost the step a deadline and a re-dispatch.
    retry = {
        "acks_late": True,
        "autoretry_for": (TransientError, sqlite3.OperationalError),
        "retry_backoff": 0.5,
        "retry_backoff_max": 10,
        "max_retries": None,
    }

    @app.task(name=OUTCOME_TASK, **retry)
    def outcome(outcome: dict[str, Any]) -> None:
        engine.handle_outcome(outcome)

    @app.task(name=SUBMIT_TASK, **retry)
    def submit(order: Any, definition: str = ORDER_SAGA.name) -> str | None:
        try:
            saga_id, _ = engine.submit(definition, order)
        except InvalidOrder as exc:
            log.error("refused a submitted order: %s", exc)
            return None
        return saga_id

    class RecoveryAndSweeper(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            sweeper = Sweeper(
                engine,
                settings.sweep_interval,
                outcome_backlog(settings.broker_url, settings.queue(ORCHESTRATOR_QUEUE)),
            )
            self.sweeper = Periodic("saga-sweeper", settings.sweep_interval, sweeper.tick)

        def start(self, worker: Any) -> None:
            engine.recover()
            self.sweeper.start()

        def stop(self, worker: Any) -> None:
            self.sweeper.stop()

    app.steps["worker"].add(RecoveryAndSweeper)
    return app, engine


def run(settings: Settings, loglevel: str = "INFO") -> None:
    """Run the orchestrator in the foreground until it is stopped."""
    app, _ = build(settings)
    queue = settings.queue(ORCHESTRATOR_QUEUE)
    watchdog.install(app, settings.broker_url, [queue], settings.stall_timeout)
    app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--queues",
            queue,
            "--hostname",
            f"orchestrator-{settings.queue_prefix or 'main'}@%h",
            "--loglevel",
            loglevel,
            "--without-mingle",
            "--without-gossip",
        ]
    )
