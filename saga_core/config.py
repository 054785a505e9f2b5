"""Every setting, read from the environment in one place.

All variables share the prefix ``SAGA_``. Nothing else in the code base reads ``os.environ``
for configuration: build a :class:`Settings` with :func:`load` and pass it down. The
settings of the layers above (a test tool's switch, the HTTP API's callers) are read here
too, kept as they were given (``Settings.above``), and interpreted, and checked, by the
layer they belong to.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from saga_core.broker import on_loopback, tls_options
from saga_core.database import Location, location
from saga_core.errors import ConfigError
from saga_core.signing import CLIENT, MIN_KEY_LENGTH, Keyring, new_keys

PREFIX = "SAGA_"
ORCHESTRATOR_QUEUE = "orchestrator"
#: What a service (and so a queue, a signing identity, a database schema) may be named.
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./var")
    # Empty: every database is a SQLite file in data_dir. A postgresql:// URL: the saga
    # store in schema "saga" there, and each service in a schema named after it.
    database_url: str = ""
    # A service's own database (SAGA_PAYMENT_DATABASE_URL, ...), where it has one.
    service_database_urls: Mapping[str, str] = field(default_factory=dict)
    # Prepended to every queue name so that two systems (or two test runs) can share one Redis.
    queue_prefix: str = ""
    # The app every process runs (its sagas and services): package.module:attribute, as
    # ``celery -A`` names a Celery app; empty: the built-in one (saga_app.BUILT_IN).
    app: str = ""
    # Its services' names, once the app is loaded (saga_app.configured): their queues and
    # signing identities. Not a setting of its own: the app says.
    services: tuple[str, ...] = ()
    # Redis redelivers an unacknowledged message only after this many seconds: keep it well
    # above the longest step plus its retry countdowns, or healthy steps run twice.
    visibility_timeout: float = 600.0
    # How often a worker looks for unacked messages whose visibility timeout has passed.
    unacked_restore_interval: float = 10.0
    # The backstop: a step whose outcome has not come back in this time is sent again, where
    # no worker of its service reports liveness (see heartbeat_interval) to decide sooner.
    step_timeout: float = 30.0
    # Every worker tells the orchestrator, this often, which steps it holds; 0 turns the
    # heartbeats off, and with them liveness: deadlines alone then find lost steps.
    heartbeat_interval: float = 1.0
    # A step that no worker has reported holding for this long, its queue seen empty since,
    # is lost (its worker died): the orchestrator sends it again.
    liveness_timeout: float = 3.0
    # Dispatches of one step (first one included) before the orchestrator gives it up.
    max_dispatches: int = 5
    # Runs of one message in a row in which its worker died, before the worker gives it up.
    max_deliveries: int = 3
    sweep_interval: float = 1.0
    # A worker whose queues hold messages while it receives none for this long restarts.
    stall_timeout: float = 20.0
    log_level: str = "INFO"
    # "text" for people, "json" (one object per line) for log collectors.
    log_format: str = "text"
    # Celery task events from the service workers, for Flower and `celery events`: off by
    # default, as they add two publishes to every step (the compose file, which runs
    # Flower, turns them on).
    task_events: bool = False
    # RabbitMQ only: quorum queues (replicated; what a RabbitMQ cluster wants) for every queue.
    quorum_queues: bool = False
    # Message signing keys by identity (saga_core.signing), the first of each signing; none:
    # signing is off. From SAGA_KEYS_FILE, then SAGA_<IDENTITY>_KEY ("new,old" while rotating).
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    # Seconds a signed message stays acceptable after it was signed (and before: clock skew).
    replay_window: float = 300.0
    # No keys configured: unsigned messages, believed from anyone on the broker. Off by
    # default: without keys, a system on one machine makes its own (keys_file_in_data_dir).
    insecure: bool = False
    # The SAGA_ variables this module does not read, by name, as given: the settings of the
    # layers above, each interpreted where it is used (saga_faults.switch, saga_tools.tokens).
    above: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Set by a process that starts this one and wants it gone with it (saga_tools.cluster):
    # a server process exits once that one has.
    parent_pid: int = 0

    def queue(self, name: str) -> str:
        return f"{self.queue_prefix}{name}"

    def all_queues(self) -> list[str]:
        """Every queue of the system: one per service of its app and the orchestrator's."""
        if not self.services:
            raise ConfigError("the app's services are not known here: load the app first")
        return [self.queue(q) for q in (*self.services, ORCHESTRATOR_QUEUE)]

    @property
    def identities(self) -> tuple[str, ...]:
        """Who signs messages (``saga_core.signing``): each service of the app, and clients
        submitting over the broker."""
        return (*self.services, CLIENT)

    def path(self, filename: str) -> Path:
        return self.data_dir / filename

    def store(self) -> Location:
        """Where the saga store lives."""
        if self.database_url:
            return location(self.database_url, "saga")
        return location(self.path("sagas.db"))

    def service_database(self, service: str) -> Location:
        """Where ``service`` keeps its data and its ledger."""
        url = self.service_database_urls.get(service) or self.database_url
        if url:
            return location(url, service)
        return location(self.path(f"{service}.db"))

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def keyring(self, needs: Sequence[str] = ()) -> Keyring:
        """The signing keys, for a process that signs or checks as each of ``needs``: with
        signing on, a missing one is a ``ConfigError`` naming its variable.

        Where none are configured, a system on one machine (its store in the data
        directory, its broker on loopback) signs with the keys of the data directory's
        keys file, made by the first process that needs it; elsewhere a process without
        keys is refused with a ``ConfigError`` saying how to make them, unless
        ``SAGA_INSECURE=1`` turns signing off."""
        keys = self.keys
        if not keys and not self.insecure:
            if not self.on_one_machine():
                raise ConfigError(
                    "no message signing keys: this system's processes do not share a data "
                    "directory (its store is PostgreSQL, or its broker is not on loopback), "
                    "so they cannot make keys of their own. Make a set with `saga keys "
                    f"keys.json` and give every process {PREFIX}KEYS_FILE=keys.json (see "
                    f"docs/security.md), or set {PREFIX}INSECURE=1 to run without signing"
                )
            identities = list(dict.fromkeys([*self.identities, *needs]))
            keys = keys_of_data_dir(self.path(KEYS_FILE), identities)
        if keys:
            missing = [f"{PREFIX}{name.upper()}_KEY" for name in needs if name not in keys]
            if missing:
                raise ConfigError(
                    f"message signing is on (a key is set) but {', '.join(missing)} "
                    "is not: this process signs or checks messages with it"
                )
        return Keyring(keys, self.replay_window)

    def on_one_machine(self) -> bool:
        """Whether every process of this system shares its data directory: the store and
        the services' databases are SQLite files there, and the broker is on loopback."""
        return (
            not self.database_url
            and not self.service_database_urls
            and on_loopback(self.broker_url)
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process load these same settings."""
        return {
            **self.above,
            f"{PREFIX}BROKER_URL": self.broker_url,
            f"{PREFIX}DATA_DIR": str(self.data_dir),
            f"{PREFIX}DATABASE_URL": self.database_url,
            **{
                f"{PREFIX}{service.upper()}_DATABASE_URL": url
                for service, url in self.service_database_urls.items()
            },
            f"{PREFIX}QUEUE_PREFIX": self.queue_prefix,
            f"{PREFIX}APP": self.app,
            f"{PREFIX}VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            f"{PREFIX}UNACKED_RESTORE_INTERVAL": str(self.unacked_restore_interval),
            f"{PREFIX}STEP_TIMEOUT": str(self.step_timeout),
            f"{PREFIX}HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            f"{PREFIX}LIVENESS_TIMEOUT": str(self.liveness_timeout),
            f"{PREFIX}MAX_DISPATCHES": str(self.max_dispatches),
            f"{PREFIX}MAX_DELIVERIES": str(self.max_deliveries),
            f"{PREFIX}SWEEP_INTERVAL": str(self.sweep_interval),
            f"{PREFIX}STALL_TIMEOUT": str(self.stall_timeout),
            f"{PREFIX}LOG_LEVEL": self.log_level,
            f"{PREFIX}LOG_FORMAT": self.log_format,
            f"{PREFIX}TASK_EVENTS": "1" if self.task_events else "0",
            f"{PREFIX}QUORUM_QUEUES": "1" if self.quorum_queues else "0",
            f"{PREFIX}REPLAY_WINDOW": str(self.replay_window),
            f"{PREFIX}INSECURE": "1" if self.insecure else "0",
            **{f"{PREFIX}{name.upper()}_KEY": ",".join(ks) for name, ks in self.keys.items()},
        }


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r:.40}") from None
    if not math.isfinite(value):  # inf would turn a bound off; nan compares false to all
        raise ConfigError(f"{PREFIX}{name} must be a finite number, got {raw!r:.40}")
    if value < minimum:
        raise ConfigError(f"{PREFIX}{name} must be at least {minimum}, got {raw!r}")
    return value


#: The variables :func:`load` reads itself (with ``SAGA_``), besides each service's
#: ``_KEY`` and ``_DATABASE_URL``.
READ_HERE = frozenset(
    {
        "BROKER_URL",
        "DATA_DIR",
        "DATABASE_URL",
        "QUEUE_PREFIX",
        "APP",
        "VISIBILITY_TIMEOUT",
        "UNACKED_RESTORE_INTERVAL",
        "STEP_TIMEOUT",
        "HEARTBEAT_INTERVAL",
        "LIVENESS_TIMEOUT",
        "MAX_DISPATCHES",
        "MAX_DELIVERIES",
        "SWEEP_INTERVAL",
        "STALL_TIMEOUT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "TASK_EVENTS",
        "QUORUM_QUEUES",
        "KEYS_FILE",
        "REPLAY_WINDOW",
        "INSECURE",
        "PARENT_PID",
    }
)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    defaults = Settings()
    heartbeat_interval = _number(env, "HEARTBEAT_INTERVAL", defaults.heartbeat_interval, 0)
    liveness_timeout = _number(env, "LIVENESS_TIMEOUT", defaults.liveness_timeout, 0.1)
    if 0 < heartbeat_interval < 0.05:
        raise ConfigError(f"{PREFIX}HEARTBEAT_INTERVAL must be 0 (off) or at least 0.05")
    if liveness_timeout < 2 * heartbeat_interval:
        raise ConfigError(
            f"{PREFIX}LIVENESS_TIMEOUT ({liveness_timeout:g}) must be at least twice "
            f"{PREFIX}HEARTBEAT_INTERVAL ({heartbeat_interval:g}): one late heartbeat "
            "would otherwise make a live worker's step look lost"
        )
    broker_url = env.get(PREFIX + "BROKER_URL") or defaults.broker_url
    try:
        tls_options(broker_url)
    except ConfigError as exc:
        raise ConfigError(f"{PREFIX}BROKER_URL: {exc.message}") from None
    return Settings(
        broker_url=broker_url,
        data_dir=Path(env.get(PREFIX + "DATA_DIR") or defaults.data_dir),
        database_url=_database_url(env, "DATABASE_URL"),
        service_database_urls={
            service: url
            for variable, service in _per_service(env, "_DATABASE_URL")
            if SERVICE_NAME.fullmatch(service)
            and (url := _database_url(env, variable[len(PREFIX) :]))
        },
        queue_prefix=env.get(PREFIX + "QUEUE_PREFIX", defaults.queue_prefix),
        app=env.get(PREFIX + "APP", defaults.app).strip(),
        visibility_timeout=_number(env, "VISIBILITY_TIMEOUT", defaults.visibility_timeout, 1),
        unacked_restore_interval=_number(
            env, "UNACKED_RESTORE_INTERVAL", defaults.unacked_restore_interval, 0.1
        ),
        step_timeout=_number(env, "STEP_TIMEOUT", defaults.step_timeout, 0.1),
        heartbeat_interval=heartbeat_interval,
        liveness_timeout=liveness_timeout,
        max_dispatches=int(_number(env, "MAX_DISPATCHES", defaults.max_dispatches, 1)),
        max_deliveries=int(_number(env, "MAX_DELIVERIES", defaults.max_deliveries, 1)),
        sweep_interval=_number(env, "SWEEP_INTERVAL", defaults.sweep_interval, 0.05),
        stall_timeout=_number(env, "STALL_TIMEOUT", defaults.stall_timeout, 1),
        log_level=_choice(env, "LOG_LEVEL", defaults.log_level, LOG_LEVELS, upper=True),
        log_format=_choice(env, "LOG_FORMAT", defaults.log_format, ("text", "json")),
        task_events=flag(env, "TASK_EVENTS", defaults.task_events),
        quorum_queues=flag(env, "QUORUM_QUEUES", defaults.quorum_queues),
        keys=read_keys(env),
        above={
            name: value
            for name, value in env.items()
            if name.startswith(PREFIX)
            and name[len(PREFIX) :] not in READ_HERE
            and not name.endswith(("_KEY", "_DATABASE_URL"))
        },
        replay_window=_number(env, "REPLAY_WINDOW", defaults.replay_window, 1),
        insecure=flag(env, "INSECURE", defaults.insecure),
        parent_pid=int(_number(env, "PARENT_PID", 0, 0)),
    )


def read_keys(env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """The signing keys: those of the JSON file ``SAGA_KEYS_FILE`` (``{"billing": "key"}``,
    or a list of keys, newest first), overridden identity by identity by ``SAGA_<ID>_KEY``
    (keys separated by commas)."""
    path = env.get(PREFIX + "KEYS_FILE", "").strip()
    keys = _keys_file(PREFIX + "KEYS_FILE", path) if path else {}
    for name, identity in _per_service(env, "_KEY"):
        if not SERVICE_NAME.fullmatch(identity):
            raise ConfigError(f"{name}: {identity!r} cannot name a service")
        raw = env[name].strip()
        if raw:
            keys[identity] = _checked_keys(name, [k.strip() for k in raw.split(",")])
    return keys


def _per_service(env: Mapping[str, str], suffix: str) -> list[tuple[str, str]]:
    """Each variable ``SAGA_<NAME><suffix>`` of ``env``, with its NAME in lower case: the
    settings an app's service (or the client) has, whatever the app names it."""
    return [
        (variable, variable[len(PREFIX) : -len(suffix)].lower())
        for variable in sorted(env)
        if variable.startswith(PREFIX) and variable.endswith(suffix)
    ]


def _keys_file(name: str, path: str) -> dict[str, tuple[str, ...]]:
    keys: dict[str, tuple[str, ...]] = {}
    data = json_object(name, path, 'an object like {"billing": "key"}')
    for identity, value in data.items():
        if not SERVICE_NAME.fullmatch(identity):
            raise ConfigError(f"{name}: {identity!r} cannot name a service or the client")
        listed = [value] if isinstance(value, str) else value
        if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
            raise ConfigError(f"{name}: {identity!r} must be a key or a list of keys")
        keys[identity] = _checked_keys(f"{name}[{identity!r}]", listed)
    return keys


#: The keys file a system on one machine makes in its data directory (``Settings.keyring``).
KEYS_FILE = "keys.json"


def keys_of_data_dir(path: Path, identities: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The keys of the data directory's keys file, made (readable by its owner only) if
    there is none yet, with a key for each of ``identities``; one that lacks some of them
    (an app given a service since) gets theirs added. Each version is written whole under
    another name, then put in place under a lock: a process that starts at the same moment
    reads either no file or the whole of one, and none loses another's key."""
    what = f"the data directory's keys file ({path})"
    if path.exists():
        keys = _keys_file(what, str(path))
        if all(identity in keys for identity in identities):
            return keys
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)  # the directory itself: no lock file left
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = _keys_file(what, str(path)) if path.exists() else {}
        missing = [identity for identity in identities if identity not in keys]
        if missing:
            keys.update({k: tuple(v) for k, v in new_keys(missing).items()})
            _write_private(path, json.dumps({k: list(v) for k, v in keys.items()}, indent=2))
    finally:
        os.close(lock)  # and the lock with it
    return keys


def _write_private(path: Path, text: str) -> None:
    """``text`` as the file at ``path``, readable by its owner only, put in place whole."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(draft, path)
    finally:
        draft.unlink(missing_ok=True)


def json_object(name: str, path: str, shape: str) -> dict[str, Any]:
    """The JSON object in file ``path``, named by setting ``name`` in any error."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: {path} must hold {shape}")
    return data


def _checked_keys(name: str, keys: list[str]) -> tuple[str, ...]:
    if not keys or len(keys) > 3:
        raise ConfigError(f"{name}: one to three keys (the first signs), got {len(keys)}")
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() or c == "," for c in key):
            # the key itself is never part of an error: it would end up in logs
            raise ConfigError(
                f"{name}: a key must be at least {MIN_KEY_LENGTH} characters, with no spaces "
                "or commas (`saga keys` makes a set)"
            )
    return tuple(keys)


def _database_url(env: Mapping[str, str], name: str) -> str:
    url = env.get(PREFIX + name, "").strip()
    if url:
        try:
            location(url)
        except ConfigError as exc:
            raise ConfigError(f"{PREFIX}{name}: {exc.message}") from None
    return url


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The switch ``SAGA_<name>`` of ``env``: 1 or 0 (``default`` where unset)."""
    return _choice(env, name, "1" if default else "0", ("1", "0")) == "1"


def _choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    allowed: tuple[str, ...],
    upper: bool = False,
) -> str:
    given = (env.get(PREFIX + name) or default).strip()
    raw = given.upper() if upper else given.lower()
    if raw not in allowed:
        raise ConfigError(f"{PREFIX}{name} must be one of {', '.join(allowed)}, got {given!r:.40}")
    return raw
