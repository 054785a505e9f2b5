"""Building the Celery app, from one Settings object, for a worker or for a producer."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Exchange, Producer, Queue
from kombu.utils.uuid import uuid

from saga_core import broker, dead_letters, redis_transport, wire
from saga_core.config import ORCHESTRATOR_QUEUE, Settings
from saga_core.messages import HEARTBEAT_TASK, OUTCOME_TASK, SUBMIT_TASK


def make_app(settings: Settings, name: str = "saga") -> Celery:
    """A Celery app configured by :func:`celery_config`."""
    wire.install()  # every task body this process reads, read within bounds
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, wired for safe redelivery.

    Late acks with reject-on-worker-lost and a prefetch of one mean that a message is
    removed from the broker only after its task finished, and a killed worker's message
    goes back to the queue instead of being lost. JSON is the only accepted content type.
    """
    if broker.is_amqp(settings.broker_url):
        # A publish returns once RabbitMQ has taken the message (publisher confirms).
        transport: dict[str, Any] = {"confirm_publish": True}
        extra: dict[str, Any] = (
            {"task_default_queue_type": "quorum", "task_create_missing_queue_type": "quorum"}
            if settings.quorum_queues
            else {}
        )
    else:
        serves = redis_transport.serves(settings.broker_url)
        extra = {"broker_transport": redis_transport.NAME} if serves else {}
        transport = {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.unacked_restore_interval,
            # Scan for expired unacked messages on every interval, not every tenth.
            "unacked_restore_throttle": 1,
            # where the transport puts a message it cannot read (saga_core.redis_transport)
            "dead_letters": settings.queue(dead_letters.QUEUE),
        }
    tls = broker.tls_options(settings.broker_url)
    if tls is not None:
        extra["broker_use_ssl"] = tls
    return dict(
        broker_url=broker.without_tls_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        **extra,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=settings.queue(ORCHESTRATOR_QUEUE),
        task_routes={
            OUTCOME_TASK: {"queue": settings.queue(ORCHESTRATOR_QUEUE)},
            SUBMIT_TASK: {"queue": settings.queue(ORCHESTRATOR_QUEUE)},
            HEARTBEAT_TASK: {"queue": settings.queue(ORCHESTRATOR_QUEUE)},
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=settings.task_events,
        worker_enable_remote_control=False,
    )


@lru_cache(maxsize=256)
def direct(queue: str, quorum: bool = False) -> Queue:
    """``queue`` reached through the broker's default exchange: a message goes straight to
    it, with no lookup of exchange bindings (on Redis, one round trip less per publish).
    ``quorum`` (RabbitMQ): declared as a quorum queue, as the workers declare theirs."""
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return Queue(queue, Exchange(""), routing_key=queue, queue_arguments=arguments)


def task_message(
    app: Celery, task: str, argument: Any
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The headers, properties and body of a Celery message for ``task`` with its one
    ``argument``. Empty reprs: Celery would otherwise render the argument into the headers
    (a fifth of a publish's cost, profiled) and copy a saga's input into logs."""
    headers, properties, body, _ = app.amqp.as_task_v2(
        uuid(), task, args=[argument], argsrepr="", kwargsrepr=""
    )
    return headers, properties, body


def stored_task(app: Celery, queue: str, task: str, argument: Any) -> str:
    """A Celery message for ``task`` with its one ``argument``, as kombu's Redis transport
    stores it on the list of ``queue`` (``redis_transport.stored_message``)."""
    return redis_transport.stored_message(queue, *task_message(app, task, argument))


def publish_task(
    app: Celery, producer: Producer, queue: str, task: str, argument: Any, **options: Any
) -> None:
    """Send a Celery message for ``task`` with its one ``argument`` straight to ``queue``
    through ``producer``: for processes that publish on a connection of their own rather
    than through Celery's producer pool."""
    headers, properties, body = task_message(app, task, argument)
    producer.publish(
        body,
        exchange="",
        routing_key=queue,
        headers=headers,
        delivery_mode="persistent",
        **properties,
        **options,
    )


def send(app: Celery, queue: Queue, task: str, argument: Any) -> None:
    """Send a Celery message for ``task`` with its one ``argument`` straight to ``queue``,
    through one of ``app``'s pooled producers: what ``send_task`` sends, without its routing,
    signals and event set-up (a third of its cost, profiled). RabbitMQ drops what is sent to
    a queue that was never declared, so there the queue is declared (once per connection).

    On plain Redis it is one LPUSH of the message as kombu stores it, on this process's
    client (``redis_transport.push``): kombu's publish costs as much again as the
    round trip, on every step's outcome. Where that push fails, kombu's publish sends it,
    retrying by the app's policy; a push that took effect and lost its answer then arrives twice,
    which every receiver already takes in its stride (an outcome applied twice is refused
    as a duplicate, a command runs once by its idempotency key)."""
    url = app.conf.broker_url
    if redis_transport.serves(url) and redis_transport.push(
        url, queue.name, stored_task(app, queue.name, task, argument)
    ):
        return
    declare = [queue] if broker.is_amqp(url) else []
    with app.producer_or_acquire() as producer:
        publish_task(
            app,
            producer,
            queue.name,
            task,
            argument,
            declare=declare,
            retry=True,
            retry_policy=app.conf.task_publish_retry_policy,
        )
