"""PostgreSQL connections that take the calls a ``sqlite3`` connection takes, so the store
and the services write their SQL once (``?`` parameters, rows read by name or position).

A connection lives in one schema (its ``search_path``) and runs in autocommit mode, so its
transactions are the explicit ``BEGIN``/``COMMIT`` of :func:`saga_core.database.transaction`.
JSON columns are read back as the text they were written as, as SQLite returns them. A
connection that fails (the server restarted, a failover, a deadlock or serialization
failure) raises ``TransientError``: the caller tries again, and the next statement outside
a transaction opens a new connection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

from saga_core.errors import ConfigError, DatabaseUnavailable, TransientError

CONNECT_TIMEOUT = 10


class Row:
    """A row read by column name or by position, like ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values, self._index = values, index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))})"


def _row_factory(cursor: Any) -> Any:
    # Read from the result's field names, not cursor.description, which builds a column
    # object per field on every statement: a tenth of a worker's step on PostgreSQL.
    result = cursor.pgresult
    if result is None or not result.nfields:
        return None
    index = _index(tuple(result.fname(i) for i in range(result.nfields)))
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def _index(names: tuple[bytes, ...]) -> dict[str, int]:
    return {name.decode(): i for i, name in enumerate(names)}


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (and a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def options(schema: str) -> str:
    """A connection's settings: its schema, and text as UTF-8 whatever the database's own
    encoding (psycopg hands over bytes from a SQL_ASCII database)."""
    return f"-c search_path={schema} -c client_encoding=UTF8"


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy names it with psycopg 3 as the driver."""
    return "postgresql+psycopg://" + url.partition("://")[2]


def connect(url: str, schema: str) -> PgConnection:
    return PgConnection(url, schema)


class PgConnection:
    """One connection to PostgreSQL, in ``schema``."""

    def __init__(self, url: str, schema: str):
        self.url, self.schema = url, schema
        self._conn: psycopg.Connection[Any] | None = None
        self._open()

    def _open(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                options=options(self.schema),
                row_factory=_row_factory,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        except psycopg.ProgrammingError as exc:  # a URL psycopg cannot read
            raise ConfigError(f"bad PostgreSQL URL: {exc}") from exc
        for json_type in ("json", "jsonb"):
            conn.adapters.register_loader(json_type, TextLoader)
        self._conn = conn
        return conn

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The psycopg connection (opened again where the last one broke)."""
        if self._conn is None or self._conn.closed:
            return self._open()
        return self._conn

    @property
    def in_transaction(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if sql == "ROLLBACK" and (self._conn is None or self._conn.closed):
            return None  # the connection broke in the transaction: nothing to roll back
        try:
            return self.connection.execute(_placeholders(sql), parameters)
        except psycopg.OperationalError as exc:
            raise self._failure(exc) from exc

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Any:
        try:
            cursor = self.connection.cursor()
            cursor.executemany(_placeholders(sql), parameters)
            return cursor
        except psycopg.OperationalError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: psycopg.OperationalError) -> TransientError:
        """A lost connection (dropped, to open another next time) says the server is away;
        anything else of the kind (a deadlock, a serialization failure) is a passing failure."""
        if self._conn is not None and self._conn.broken:
            self._conn.close()
            self._conn = None
            return DatabaseUnavailable(f"PostgreSQL went away: {exc}")
        return TransientError(f"PostgreSQL: {exc}")

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """Statements sent without waiting for each one's answer, until a result is read.
        A failure surfaces where an answer is read, or where the block ends: it is told
        as :meth:`execute` tells it (the server away, or a passing failure)."""
        try:
            with self.connection.pipeline():
                yield
        except psycopg.OperationalError as exc:
            raise self._failure(exc) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def create_database(url: str, name: str) -> str:
    """A new, empty database ``name`` on the server of ``url`` (for a run of its own: a
    chaos campaign, a benchmark); returns its URL."""
    if not name.isidentifier():
        raise ConfigError(f"bad database name {name!r}")
    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def drop_database(url: str) -> None:
    """Drop the database of ``url``, closing whatever connections it still has."""
    name = urlsplit(url).path.lstrip("/")
    admin_url = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
