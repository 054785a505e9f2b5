"""The broker from outside Celery: is it there, how many messages wait, emptying queues.
Redis and RabbitMQ (an ``amqp://`` URL) both.

TLS: a ``rediss://`` or ``amqps://`` URL carries its options in its query, the one place
they are set: ``ssl_ca_certs`` (the CA file that signed the broker's certificate),
``ssl_certfile`` and ``ssl_keyfile`` (a client certificate, where the broker asks for one)
and ``ssl_cert_reqs`` (``required``, the default; ``optional``; ``none``). redis-py reads
them from the URL itself; Celery and kombu are given them by :func:`tls_options`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

import redis
from amqp.exceptions import NotFound
from kombu import Connection

from saga_core.errors import ConfigError

TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def is_amqp(url: str) -> bool:
    """Whether ``url`` names an AMQP broker (RabbitMQ) rather than Redis."""
    return urlparse(url).scheme in ("amqp", "amqps", "pyamqp")


def without_tls_options(url: str) -> str:
    """``url`` without the TLS options of its query (for kombu, which takes them apart)."""
    parts = urlparse(url)
    query = parse_qsl(parts.query)
    kept = [(k, v) for k, v in query if k not in TLS_OPTIONS]
    return url if kept == query else parts._replace(query=urlencode(kept)).geturl()


def tls_options(url: str) -> dict[str, Any] | None:
    """What Celery's ``broker_use_ssl`` (and kombu's ``ssl``) take for ``url``: None for a
    broker without TLS; a ``ConfigError`` naming a bad option."""
    parts = urlparse(url)
    if parts.scheme not in ("rediss", "amqps"):
        return None
    given = {k: v for k, v in parse_qsl(parts.query) if k in TLS_OPTIONS}
    reqs = given.pop("ssl_cert_reqs", "required")
    if reqs not in CERT_REQS:
        raise ConfigError(
            f"the broker URL's ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, got {reqs!r}"
        )
    if parts.scheme == "rediss":
        return {"ssl_cert_reqs": CERT_REQS[reqs], **given}
    # py-amqp's names for the same options
    return {"cert_reqs": CERT_REQS[reqs], **{k.removeprefix("ssl_"): v for k, v in given.items()}}


def loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is one only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def on_loopback(url: str) -> bool:
    """Whether the broker at ``url`` is on this machine's loopback (or a Unix socket)."""
    parsed = urlparse(url)
    if parsed.scheme in ("unix", "memory", "redis+socket"):
        return True
    return loopback_host(parsed.hostname or "localhost")


def amqp_connection(url: str, **options: Any) -> Connection:
    """A kombu connection to the RabbitMQ at ``url``, over TLS where it says so."""
    tls = tls_options(url)
    if tls is not None:
        options["ssl"] = tls
    return Connection(without_tls_options(url), **options)


def _amqp_reachable(url: str, timeout: float) -> bool:
    try:
        with amqp_connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # any failure to connect means: not reachable
        return False


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether the broker at ``url`` answers (Redis: PING; RabbitMQ: a connection)."""
    if is_amqp(url):
        return _amqp_reachable(url, timeout)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def queue_depths(url: str, queues: list[str]) -> dict[str, int]:
    """Messages waiting on each queue."""
    depth = QueueDepth(url, [])
    return {q: depth.of(q) or 0 for q in queues}


class QueueDepth:
    """Messages waiting on ``queues`` in all, read through one long-lived client; None where
    the broker does not answer. On Redis a queue is a list (LLEN); on RabbitMQ a passive
    declare tells its message count."""

    def __init__(self, url: str, queues: list[str]):
        self.url, self.queues = url, list(queues)
        self.amqp = is_amqp(url)
        self.client = (
            None
            if self.amqp
            else redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        )
        self.connection: Connection | None = None

    def __call__(self) -> int | None:
        counts = [self.of(q) for q in self.queues]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def of(self, queue: str) -> int | None:
        if self.client is not None:
            try:
                return int(self.client.llen(queue))
            except (redis.RedisError, OSError):
                return None
        try:
            if self.connection is None:
                self.connection = amqp_connection(self.url, connect_timeout=2)
            channel = self.connection.channel()
            try:
                return int(channel.queue_declare(queue, passive=True).message_count)
            finally:
                channel.close()
        except NotFound:
            return 0  # not declared yet: nothing waits on it
        except Exception:  # the broker does not answer
            self.connection = None
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close()
            if self.connection is not None:
                self.connection.release()
        self.connection = None


def purge(url: str, queues: list[str]) -> None:
    """Empty ``queues`` (those that exist)."""
    if is_amqp(url):
        with amqp_connection(url) as connection:
            for queue in queues:
                channel = connection.channel()
                try:
                    channel.queue_purge(queue)
                except NotFound:
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return
    client = redis.Redis.from_url(url)
    try:
        if queues:
            client.delete(*queues)
    finally:
        client.close()


def discard(url: str, queues: list[str]) -> None:
    """Delete ``queues`` (and, on RabbitMQ, the exchanges Celery named after them; on
    Redis, the lists of their readers, ``orchestrator.inbox``): what a test leaves behind on
    a shared broker."""
    if not is_amqp(url):
        purge(url, queues)
        client = redis.Redis.from_url(url)
        try:
            for queue in queues:
                escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in queue)
                readers = list(client.scan_iter(match=f"{escaped}.reader*", count=1000))
                if readers:
                    client.delete(*readers)
        finally:
            client.close()
        return
    with amqp_connection(url) as connection:
        for name in queues:
            channel = connection.channel()
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)
            except Exception:  # already gone: nothing to discard
                pass
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
