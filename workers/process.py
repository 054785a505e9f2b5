"""A service worker process: a Celery worker serving one service's queue (or several)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps, signals

from saga_core import broker, dead_letters, signing, watchdog
from saga_core.celery_app import make_app
from saga_core.config import Settings
from saga_core.middleware import Middleware
from saga_core.signing import RefusalCount
from workers import health, heartbeat, task
from workers.service import Service


def build(
    settings: Settings,
    services: Sequence[Service],
    middleware: Sequence[Middleware] = (),
) -> Celery:
    """A Celery app with the tasks of ``services`` registered and routed to their queues,
    each run with ``middleware`` around it; commands checked and outcomes signed with the
    services' keys, where signing is on."""
    app = make_app(settings, "workers")
    names = [s.name for s in services]
    keyring = settings.keyring(names)
    signing.announce(keyring, f"worker for {', '.join(names)}")
    # created before the pool forks, so that every pool process counts into it
    refusals = RefusalCount()
    middleware = (*middleware, refusals)
    # What the worker cannot read is dead-lettered (workers.consumer), counted with the rest.
    app.conf.worker_consumer = "workers.consumer:Consumer"
    dead = dead_letters.for_system(settings)
    app.conf.saga_dead_letters = (dead.url, dead.name, dead.quorum)
    dead_letters.listen(refusals.refused)
    for service in services:
        task.register(app, settings, service, keyring, middleware)
    health.register(app)
    if settings.heartbeat_interval > 0:
        heartbeat.install(app, settings, services, keyring, refusals)
    app.steps["worker"].add(WakeOnShutdown)
    return app


class WakeOnShutdown(bootsteps.StartStopStep):
    """Wakes the worker's event loop when a shutdown is asked for.

    Celery's signal handler only sets a flag, which the loop reads between polls, and a
    poll lasts until the next timer is due: on RabbitMQ, seconds (measured: 2 s of a
    3.5 s warm shutdown). A byte on a pipe the loop watches ends the poll at once.
    """

    requires = {"celery.worker.components:Hub"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.pipe: tuple[int, int] | None = None

    def start(self, worker: Any) -> None:
        if worker.hub is None:  # a pool without an event loop (solo, threads)
            return
        read, write = self.pipe = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        worker.hub.add_reader(read, lambda *_: os.read(read, 64))
        signals.worker_shutting_down.connect(self._wake, weak=False)

    def _wake(self, **_: Any) -> None:
        if self.pipe is not None:
            # a full pipe already holds a wake-up: the loop is woken either way
            with contextlib.suppress(BlockingIOError):
                os.write(self.pipe[1], b"!")

    def shutdown(self, worker: Any) -> None:
        signals.worker_shutting_down.disconnect(self._wake)
        if self.pipe is not None:
            if worker.hub is not None:
                worker.hub.remove_reader(self.pipe[0])
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


def default_pool(broker_url: str) -> str:
    """The Celery pool a worker runs on unless told otherwise.

    On Redis, solo: the step runs in the worker's own process, a third less CPU per step
    than prefork's hand-over to a pool child and back (docs/benchmarks.md); ``saga worker``
    supervises the process instead. On RabbitMQ, prefork: a solo worker there takes its
    next message only every second or two under a backlog (5.6 orders/s against 65.6 on
    prefork, measured; docs/benchmarks.md), which we have not traced inside Celery's
    event loop yet.
    """
    return "prefork" if broker.is_amqp(broker_url) else "solo"


def run(
    settings: Settings,
    services: Sequence[Service],
    *,
    pool: str,
    concurrency: int = 1,
    loglevel: str = "INFO",
    middleware: Sequence[Middleware] = (),
) -> None:
    """Run a worker in the foreground for ``services`` until it is stopped."""
    app = build(settings, services, middleware)
    for service in services:  # a data dir that cannot be written fails here, not mid-saga
        service.prepare(settings.service_database(service.name))
    queues = [settings.queue(s.name) for s in services]
    watchdog.install(app, settings.broker_url, queues, settings.stall_timeout)
    name = "all" if len(services) > 1 else services[0].name
    # JSON logs are for collectors: no start-up banner on stdout among them.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.worker_main(
        [
            *quiet,
            "worker",
            "--queues",
            ",".join(queues),
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--hostname",
            f"{name}-{settings.queue_prefix or 'main'}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
    )
