"""The orchestrator process: a lean consumer of the ``orchestrator`` queue.

It reads outcomes (and submissions) in batches of whatever has arrived, applies each batch
in one store transaction, publishes the commands that follow in one round trip, and only
then acknowledges the batch. A crash anywhere in between redelivers outcomes whose
transitions were either not stored (they apply now) or stored (refused as duplicates), and
a command lost on the way is found lost by the sweeper and sent again.

It is not a Celery worker on purpose: a worker pays a task call, an ack, a publish and a
commit for every outcome, which made the orchestrator half the system's CPU (profiled,
docs/benchmarks.md). The messages are Celery's all the same: services reply with the
``saga.outcome`` task, and commands are Celery task messages the service workers run.
Between batches the same loop runs the sweeper, so there is no second thread to share the
store or the broker connection with.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import Celery
from kombu import Connection, Producer
from kombu.exceptions import BatchPublishError, KombuError, OperationalError

from orchestrator.definition import SagaDefinition, step_services
from orchestrator.engine import Engine, Publisher
from orchestrator.inbox import Delivery, Inbox, KombuInbox, Outbox, RedisInbox
from orchestrator.metrics import Metrics
from saga_core import dead_letters, ping, redis_transport, signing, watchdog
from saga_core.broker import QueueDepth
from saga_core.celery_app import direct, make_app, publish_task, send, stored_task
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.database import BUSY
from saga_core.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidInput,
    MalformedMessage,
)
from saga_core.messages import (
    HEARTBEAT_KIND,
    HEARTBEAT_TASK,
    OUTCOME_KIND,
    OUTCOME_TASK,
    PING_TASK,
    SUBMIT_TASK,
    Command,
    Heartbeat,
    Outcome,
    Ping,
    submission_kind,
    submission_saga,
)
from saga_core.middleware import Middleware
from saga_core.periodic import Periodic
from saga_core.signing import CLIENT, Keyring

log = logging.getLogger("saga.orchestrator")

#: The most outcomes applied in one store transaction. Larger batches gain little (the
#: commit is then a small part of the cost) and hold the store's write lock for longer.
BATCH_SIZE = 200

#: Seconds after its last take before a reader's unacknowledged batch is anyone's to put
#: back on the queue (Redis; RabbitMQ requeues it when the connection drops). Well above
#: the longest gap between two takes (a sweep interval and a batch).
READER_LEASE = 10.0

#: The tasks this process serves.
TASKS = (OUTCOME_TASK, SUBMIT_TASK, HEARTBEAT_TASK, PING_TASK)


def celery_publisher(app: Celery, settings: Settings) -> Publisher:
    """Commands sent one by one through the app's pooled producers: for a process that
    sends a few (a client submitting a saga, an operator's retry). It acts for the
    orchestrator, with its keys. A broker that does not take one raises
    ``BrokerUnavailable``, whatever the transport's own error."""
    keyring = settings.keyring(settings.services)
    with app.connection_for_write() as connection:  # not connected: only its error types
        down = (KombuError, OSError, *connection.connection_errors, *connection.channel_errors)

    def publish(commands: Sequence[Command], sent: Callable[[], None]) -> None:
        try:
            for c in commands:
                queue = direct(settings.queue(c.queue), settings.quorum_queues)
                send(app, queue, c.operation, keyring.sign(c.kind, c.to_wire(), (c.queue,)))
        except down as exc:
            raise BrokerUnavailable(f"the broker did not take a command: {exc}") from exc
        sent()

    return publish


class BatchPublisher:
    """Commands as Celery task messages through one long-lived producer, all of a call in
    one batch; or, given an ``outbox`` (Redis), into it, to go out with the inbox's next
    call to Redis."""

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        connection: Connection,
        keyring: Keyring,
        outbox: Outbox | None = None,
    ):
        self.app, self.settings, self.keyring, self.outbox = app, settings, keyring, outbox
        self.producer = Producer(connection.channel(), serializer="json")
        # Declared once, so that a command for a service whose worker has not started yet
        # waits in its queue (a broker with real exchanges would drop it otherwise).
        for name in settings.all_queues():
            direct(name, settings.quorum_queues)(self.producer.channel).declare()

    def __call__(self, commands: Sequence[Command], sent: Callable[[], None]) -> None:
        if self.outbox is not None:
            for c in commands:
                wire = self.keyring.sign(c.kind, c.to_wire(), (c.queue,))
                queue = self.settings.queue(c.queue)
                self.outbox.add(queue, stored_task(self.app, queue, c.operation, wire))
            self.outbox.when_sent(sent)
            return
        batch = (
            self.producer.batch(max_size=BATCH_SIZE)
            if self.producer.supports_batch_publish
            else contextlib.nullcontext()
        )
        with batch:
            for c in commands:
                wire = self.keyring.sign(c.kind, c.to_wire(), (c.queue,))
                publish_task(
                    self.app, self.producer, self.settings.queue(c.queue), c.operation, wire
                )
        sent()


class Orchestrator:
    """Recovery at start, then batches of outcomes and sweeps until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        definitions: Mapping[str, SagaDefinition],
        batch_size: int = BATCH_SIZE,
        middleware: Sequence[Middleware] = (),
        retired: Sequence[SagaDefinition] = (),
    ):
        """Runs the sagas of ``definitions`` (and, to their end, those in flight on the
        ``retired`` versions); a submission over the broker that names no saga is for the
        first of them."""
        self.settings, self.batch_size = settings, batch_size
        self.definitions = dict(definitions)
        self.first = next(iter(self.definitions))
        self.retired = tuple(retired)
        self.middleware = tuple(middleware)
        # It signs commands as every service, and checks what each service sends.
        self.keyring = settings.keyring(settings.services)
        self.step_services = step_services([*self.definitions.values(), *self.retired])
        self.app = make_app(settings, "orchestrator")
        self.queue = direct(settings.queue(ORCHESTRATOR_QUEUE), settings.quorum_queues)
        self.dead_letters = dead_letters.for_system(settings)
        #: What a batch's apply raises that is the broker's going away: never isolated.
        self._transient: tuple[type[BaseException], ...] = (KombuError, OSError)
        self.received = 0  # for the watchdog: messages taken so far
        self.busy = True  # for the watchdog: not waiting on the broker
        self._stopping = threading.Event()
        self._next_sweep = 0.0
        self._producer: Producer | None = None
        self.name = f"orchestrator@{socket.gethostname()}"
        #: This process's reader of the queue: kept across reconnections, so that what it
        #: held when its connection broke is the first it takes again.
        self.id = uuid.uuid4().hex

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Serve until stopped, reconnecting after a broker outage."""
        delay = 0.5
        while not self._stopping.is_set():
            # On Redis, every poll that finds nothing also scans for expired unacknowledged
            # messages (four round trips), and this loop polls once per batch to find the
            # batch's end. The service workers scan on a timer; here, once in a thousand.
            connection = self.app.connection_for_write(
                transport_options={"unacked_restore_throttle": 1000}
            )
            try:
                self._serve(connection)
                delay = 0.5
            except (
                OperationalError,  # kombu's own word for "could not connect"
                # The broker went away during a batch's publish: which of its commands went
                # out is unknown. Its outcomes stay unacknowledged and come again (refused as
                # duplicates: their transitions committed); a command that was lost goes
                # out again when the sweeper finds its step lost.
                BatchPublishError,
                *connection.connection_errors,
                *connection.channel_errors,
            ) as exc:
                delay = self._back_off("broker", exc, delay)
            except DatabaseUnavailable as exc:  # at start-up: recovery needs the store
                delay = self._back_off("store", exc, delay)
            finally:
                with contextlib.suppress(Exception):
                    connection.release()

    def _back_off(self, what: str, exc: Exception, delay: float) -> float:
        """Wait ``delay`` seconds after ``what`` did not answer; returns the next delay."""
        log.warning("%s unreachable (%s); reconnecting in %.1fs", what, exc, delay)
        self._stopping.wait(delay)
        return min(delay * 2, 10.0)

    def _serve(self, connection: Connection) -> None:
        connection.ensure_connection(max_retries=1)
        self._transient = (
            KombuError,
            OSError,
            *connection.connection_errors,
            *connection.channel_errors,
        )
        # Each connection to the broker serves with a store connection and a queue-depth
        # client of its own, closed with it (a reconnect would otherwise leak them).
        with contextlib.ExitStack() as closing:
            depth = QueueDepth(self.settings.broker_url, [])
            closing.callback(depth.close)
            on_redis = redis_transport.serves(self.settings.broker_url)
            outbox = Outbox() if on_redis else None
            publisher = BatchPublisher(self.app, self.settings, connection, self.keyring, outbox)
            self._producer = publisher.producer
            engine = Engine(
                self.settings,
                self.definitions,
                publisher,
                middleware=self.middleware,
                queue_depth=lambda service: depth.of(self.settings.queue(service)),
                retired=self.retired,
            )
            closing.callback(engine.close)
            engine.recover()
            inbox = self.inbox(connection, outbox)
            closing.callback(inbox.close)
            log.info("orchestrator ready on %s", self.queue.name)
            while not self._stopping.is_set():
                messages = self._take(inbox, wait=self.settings.sweep_interval)
                if messages:
                    self._handle(engine, inbox, messages)
                if self.sweep_due(len(messages), time.monotonic()):
                    self._sweep(engine)
                    inbox.rescue()

    def sweep_due(self, last_batch: int, now: float) -> bool:
        """Whether to sweep now: once per ``sweep_interval``, but not while the last batch
        came full. A full batch means outcomes and heartbeats are queued: the news a sweep
        would miss is most likely among them, and re-dispatching now would only add
        duplicate work to a system already behind (seen in chaos runs: a restarted
        orchestrator's backlog turned into a storm of re-dispatches)."""
        if last_batch >= self.batch_size or now < self._next_sweep:
            return False
        self._next_sweep = now + self.settings.sweep_interval
        return True

    def inbox(self, connection: Connection, outbox: Outbox | None = None) -> Inbox:
        """The reader of this process's queue on ``connection``'s broker (on Redis, sending
        what ``outbox`` holds with its takes)."""
        if redis_transport.serves(self.settings.broker_url):
            return RedisInbox(
                self.settings.broker_url,
                self.queue.name,
                self.batch_size,
                READER_LEASE,
                self.id,
                outbox,
            )
        return KombuInbox(connection, self.queue, self.batch_size)

    def _take(self, inbox: Inbox, wait: float) -> Sequence[Delivery]:
        self.busy = False
        try:
            messages = inbox.take(wait)
        finally:
            self.busy = True
        self.received += len(messages)
        return messages

    def _handle(self, engine: Engine, inbox: Inbox, messages: Sequence[Delivery]) -> None:
        """Apply a batch: outcomes together, heartbeats together, submissions together;
        then answer its pings (the batch before them is applied) and acknowledge.

        A message that cannot be read, or whose signature does not hold, is dead-lettered
        and the rest go on. A store busy beyond its timeout leaves the batch
        unacknowledged for the broker to deliver again, rather than dropping outcomes
        (each would leave its step to be found lost).
        """
        outcomes: list[tuple[Delivery, Outcome]] = []
        beats: list[tuple[Delivery, Heartbeat]] = []
        submissions: list[tuple[Delivery, Any]] = []
        pings: list[Ping] = []
        for message in messages:
            task = message.headers.get("task")
            try:
                if task not in TASKS:
                    raise MalformedMessage(f"unknown task {task!r:.60}")
                args, kwargs, _ = message.decode()
                saga = submission_saga(kwargs) if task == SUBMIT_TASK else None
                if (kwargs and task != SUBMIT_TASK) or not isinstance(args, list) or len(args) != 1:
                    raise MalformedMessage(f"{task}: expected one argument")
                if task == OUTCOME_TASK:
                    outcomes.append((message, self._outcome(args[0])))
                elif task == HEARTBEAT_TASK:
                    beats.append((message, self._heartbeat(args[0])))
                elif task == PING_TASK:
                    # unsigned: a ping changes nothing, and answers only into a pong queue
                    pings.append(Ping.from_wire(args[0]))
                else:
                    submissions.append((message, (saga, self._submission(saga, args[0]))))
            except signing.Refused as exc:
                self._dead_letter(message, task, exc.reason, exc.message)
            except MalformedMessage as exc:
                self._dead_letter(message, task, "malformed", exc.message)
            except (KombuError, ValueError, TypeError, LookupError, AttributeError) as exc:
                self._dead_letter(message, task, "malformed", f"cannot be read: {exc}")
        try:
            if outcomes:
                self._apply(outcomes, lambda pairs: engine.handle_outcomes(_items(pairs)))
            if beats:
                self._apply(beats, lambda pairs: engine.handle_heartbeats(_items(pairs)))
            if submissions:
                self._apply(submissions, self._submitter(engine))
        except _Stopping:
            return  # unacknowledged: what was not applied comes again
        if pings:
            inbox.flush()  # a pong says the batches before it are applied and sent
        if self._producer is not None:
            for request in pings:
                ping.answer(self._producer, request, self.name)
        # Acknowledged only now: the batch's transitions are committed and their commands
        # published.
        inbox.ack(messages)

    def _apply(
        self,
        items: Sequence[tuple[Delivery, Any]],
        apply: Callable[[Sequence[tuple[Delivery, Any]]], object],
    ) -> None:
        """``apply`` the (message, item) pairs of a batch together; where that fails for a
        reason that is not the store's or the broker's being away, each pair alone, and
        dead-letter a message that fails alone: one never costs the others, nor loops."""
        fatal: tuple[type[BaseException], ...] = (_Stopping, *self._transient)
        try:
            self._until_applied(lambda: apply(items))
            return
        except fatal:
            raise
        except Exception:
            log.exception("a batch cannot be applied; applying its messages one by one")
        for message, item in items:
            try:
                self._until_applied(functools.partial(apply, [(message, item)]))
            except fatal:
                raise
            except Exception as exc:
                log.exception("a message cannot be applied")
                reason = f"cannot be applied: {type(exc).__name__}: {str(exc)[:120]}"
                self._dead_letter(message, message.headers.get("task"), "malformed", reason)

    def _until_applied(self, apply: Callable[[], object]) -> None:
        """Run ``apply`` until the store is not busy (or this process is stopping)."""
        while True:
            try:
                apply()
                return
            except BUSY as exc:
                log.warning("store busy (%s); applying the batch again", exc)
                if self._stopping.wait(0.5):
                    raise _Stopping() from exc

    def _submitter(self, engine: Engine) -> Callable[[Sequence[tuple[Delivery, Any]]], object]:
        """Submissions stored and started; an invalid one dead-lettered, the others go on."""

        def submit(pairs: Sequence[tuple[Delivery, Any]]) -> None:
            by_saga: dict[str, list[tuple[Delivery, Any]]] = {}
            for message, (saga, document) in pairs:
                by_saga.setdefault(saga or self.first, []).append((message, document))
            for saga, group in by_saga.items():

                def invalid(i: int, exc: InvalidInput, group: Any = group) -> None:
                    self._dead_letter(group[i][0], SUBMIT_TASK, "malformed", exc.message)

                engine.submit_many(saga, _items(group), invalid)

        return submit

    def _dead_letter(self, message: Delivery, task: Any, reason: str, why: str) -> None:
        """Refuse ``message``: logged, counted and kept with the dead letters."""
        self.dead_letters.put(self.queue.name, f"{str(task)[:60]}: {why}", message.body)
        self._refused(str(task), reason)

    def _submission(self, saga: str | None, body: Any) -> Any:
        """The input in ``body`` of a new ``saga`` (None: the first), signed by a client."""
        if saga is not None and saga not in self.definitions:
            raise MalformedMessage(f"{SUBMIT_TASK}: no saga named {saga!r:.60} in this app")
        kind = submission_kind(saga)
        signers = self.keyring.check(kind, body)
        signing.require(signers, CLIENT, kind)
        if signers is not None:  # checked: an object with a signature
            return {k: v for k, v in body.items() if k != "sig"}
        return body

    def _outcome(self, body: Any) -> Outcome:
        """The outcome in ``body``, signed by the service that runs its step."""
        signers = self.keyring.check(OUTCOME_KIND, body)
        outcome = Outcome.from_wire(body)
        signing.require(signers, self.step_services.get(outcome.step, "?"), OUTCOME_KIND)
        return outcome

    def _heartbeat(self, body: Any) -> Heartbeat:
        """The heartbeat in ``body``, signed by every service it serves and that runs the
        steps it holds: a worker vouches only for steps of its own services."""
        signers = self.keyring.check(HEARTBEAT_KIND, body)
        beat = Heartbeat.from_wire(body)
        for service in {*beat.services, *(self.step_services.get(h.step, "?") for h in beat.held)}:
            signing.require(signers, service, HEARTBEAT_KIND)
        return beat

    def _refused(self, task: str, reason: str) -> None:
        kind = task if task in TASKS else "unknown"  # a sender names the task: keep labels few
        for m in self.middleware:
            m.refused(kind, reason)

    def _sweep(self, engine: Engine) -> None:
        try:
            engine.sweep()
        except BUSY as exc:
            log.warning(
                "sweep failed (%s); trying again in %.1fs", exc, engine.settings.sweep_interval
            )


class _Stopping(Exception):
    """Asked to stop while the store was busy: the batch is left unacknowledged."""


def _items(pairs: Sequence[tuple[Delivery, Any]]) -> list[Any]:
    return [item for _, item in pairs]


def run(
    settings: Settings,
    definitions: Mapping[str, SagaDefinition],
    metrics_port: int | None = None,
    middleware: Sequence[Middleware] = (),
    metrics_host: str = "127.0.0.1",
    retired: Sequence[SagaDefinition] = (),
) -> None:
    """Run the orchestrator of ``definitions`` in the foreground until SIGTERM or SIGINT; with a
    ``metrics_port``, serve Prometheus metrics on it, on ``metrics_host``. ``middleware`` hooks
    into the engine (the metrics are one)."""
    middleware = list(middleware)
    if metrics_port is not None:
        kept = QueueDepth(settings.broker_url, [settings.queue(dead_letters.QUEUE)])
        metrics = Metrics(settings.store(), dead_letters=kept, sagas=list(definitions))
        metrics.serve(metrics_port, metrics_host)
        middleware.append(metrics)
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    orchestrator = Orchestrator(settings, definitions, middleware=middleware, retired=retired)
    signing.announce(orchestrator.keyring, "orchestrator")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: orchestrator.stop())
    dog = watchdog.ConsumerWatchdog(
        settings.broker_url,
        [orchestrator.queue.name],
        settings.stall_timeout,
        received=lambda: orchestrator.received,
        busy=lambda: orchestrator.busy,
    )
    Periodic("saga-watchdog", dog.interval, dog.tick).start()
    orchestrator.run()
    log.info("orchestrator stopped")
