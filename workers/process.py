"""A service worker process: a Celery worker serving one service's queue (or all four)."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from saga_core import watchdog
from saga_core.celery_app import make_app
from saga_core.config import Settings
from saga_core.middleware import Middleware
from workers import SERVICES, health, heartbeat, task


def build(
    settings: Settings,
    services: Sequence[str] = tuple(SERVICES),
    middleware: Sequence[Middleware] = (),
) -> Celery:
    """A Celery app with the tasks of ``services`` registered and routed to their queues,
    each run with ``middleware`` around it."""
    app = make_app(settings, "workers")
    for name in services:
        task.register(app, settings, SERVICES[name], middleware)
    health.register(app)
    if settings.heartbeat_interval > 0:
        heartbeat.install(app, settings, services)
    return app


def run(
    settings: Settings,
    services: Sequence[str],
    *,
    pool: str = "prefork",
    concurrency: int = 1,
    loglevel: str = "INFO",
    middleware: Sequence[Middleware] = (),
) -> None:
    """Run a worker in the foreground for ``services`` until it is stopped."""
    app = build(settings, services, middleware)
    for service in services:  # a data dir that cannot be written fails here, not mid-saga
        SERVICES[service].prepare(settings.data_dir)
    queues = [settings.queue(s) for s in services]
    watchdog.install(app, settings.broker_url, queues, settings.stall_timeout)
    name = "all" if len(services) > 1 else services[0]
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
