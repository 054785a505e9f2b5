"""Heartbeats: every worker tells the orchestrator, every ``SAGA_HEARTBEAT_INTERVAL``, that
it is alive and which dispatches it holds.

A Celery worker's main process knows every message it holds, whichever pool runs it:
running in a pool slot, reserved for one, or waiting for a retry's countdown
(``celery.worker.state.requests``). A daemon thread reads them and sends a heartbeat on a
broker connection of its own, so a step that runs for minutes is reported every second
while it runs, and one whose worker dies stops being reported with it. The orchestrator
does the rest (``orchestrator.engine.Engine.sweep``).

What it costs is one small message per worker per interval, however busy the worker is:
unlike Celery's task events, nothing is sent per task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from celery import Celery, bootsteps
from celery.worker import state
from kombu import Connection, Producer

from saga_core import signing
from saga_core.celery_app import publish_task
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.errors import MalformedMessage
from saga_core.messages import (
    HEARTBEAT_KIND,
    HEARTBEAT_TASK,
    Command,
    Heartbeat,
    Held,
    command_kind,
)
from saga_core.signing import Keyring, RefusalCount
from workers.service import Service

log = logging.getLogger("saga.worker")


def held(operations: Mapping[str, str], keyring: Keyring) -> Iterator[Held]:
    """The dispatches this worker holds that run one of ``operations`` (by the service
    that runs each), and whose signature holds: a heartbeat vouches for no command the
    worker will refuse when it runs it. A running one was checked when it started, and may
    run past the replay window; one still waiting must be fresh."""
    running = {r.id for r in list(state.active_requests)}
    for request in list(state.requests.values()):
        service = operations.get(request.name)
        if service is None or len(request.args) != 1:
            continue
        kind = command_kind(request.name)
        try:
            signing.require(
                keyring.check(kind, request.args[0], any_age=request.id in running), service, kind
            )
            command = Command.from_wire(request.name, request.args[0])
        except (MalformedMessage, signing.Refused):
            continue  # refused when it runs; nothing of a saga's to report
        yield Held(command.saga_id, command.step, command.phase, command.attempt)


class Heart:
    """Sends this worker's heartbeats from a daemon thread until stopped."""

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        worker: str,
        services: Sequence[Service],
        keyring: Keyring,
        refusals: RefusalCount | None = None,
    ):
        self.app, self.settings, self.keyring = app, settings, keyring
        self.worker, self.services = worker, tuple(s.name for s in services)
        self.refusals = refusals
        self.operations = {op: s.name for s in services for op in s.operations}
        self.queue = settings.queue(ORCHESTRATOR_QUEUE)
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saga-heartbeat", daemon=True)

    def beat(self) -> Heartbeat:
        return Heartbeat(
            worker=self.worker,
            pid=os.getpid(),
            services=self.services,
            interval=self.settings.heartbeat_interval,
            held=tuple(held(self.operations, self.keyring)),
            refused=self.refusals.snapshot() if self.refusals else {},
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._drop()

    def _run(self) -> None:
        while True:
            self.send()
            if self._stop.wait(self.settings.heartbeat_interval):
                return

    def send(self) -> None:
        """One heartbeat; a broker that does not take it costs this one, not the thread."""
        try:
            if self._producer is None:
                self._connection = self.app.connection_for_write()
                self._connection.ensure_connection(max_retries=1)
                self._producer = Producer(self._connection.channel(), serializer="json")
            publish_task(
                self.app,
                self._producer,
                self.queue,
                HEARTBEAT_TASK,
                # signed as each service it serves: it speaks for their steps alone
                self.keyring.sign(HEARTBEAT_KIND, self.beat().to_wire(), self.services),
                # RabbitMQ drops a heartbeat nobody read in time; one is worth nothing later
                expiration=max(60.0, 10 * self.settings.heartbeat_interval),
            )
        except Exception as exc:  # the broker is down or going: try again next beat
            if not self._failing:
                log.warning("heartbeat not sent (%s); trying again every beat", exc)
            self._failing = True
            self._drop()
            return
        if self._failing:
            log.info("heartbeats sent again")
        self._failing = False

    def _drop(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            # a connection already broken has nothing left to release
            with contextlib.suppress(Exception):
                connection.release()


def install(
    app: Celery,
    settings: Settings,
    services: Sequence[Service],
    keyring: Keyring,
    refusals: RefusalCount | None = None,
) -> None:
    """Send heartbeats for as long as the worker of ``app`` runs, with the count of the
    messages it refused."""

    class HeartbeatStep(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Pool"}

        def __init__(self, worker: Any, **kwargs: Any):
            super().__init__(worker, **kwargs)
            self.heart: Heart | None = None

        def start(self, worker: Any) -> None:
            self.heart = Heart(app, settings, worker.hostname, services, keyring, refusals)
            self.heart.start()

        def stop(self, worker: Any) -> None:
            if self.heart is not None:
                self.heart.stop()

    app.steps["worker"].add(HeartbeatStep)
