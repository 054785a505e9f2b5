"""Where a database lives, opening it, and running one transaction on it: SQLite or
PostgreSQL, behind one small interface.

Every database is named by a URL: ``sqlite:///relative/path.db``,
``sqlite:////absolute/path.db``, or ``postgresql://user@host:port/dbname``. On
PostgreSQL a *schema* keeps each owner's tables apart (the saga store in ``saga``, each
service in its own), so the same table names serve on both.

The code above this module writes SQL once, with ``?`` parameters, and runs it on either:
a PostgreSQL connection (:mod:`saga_core.postgres`) takes the calls a ``sqlite3``
connection takes. Where the two differ (a row lock, the write lock), this module says how.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saga_core import sqlite
from saga_core.errors import ConfigError, TransientError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

#: A row: read by column name or by position (``sqlite3.Row``, or ``saga_core.postgres.Row``).
Row = Any

#: Errors a caller may meet when the database is busy or away for a moment: try again.
BUSY: tuple[type[Exception], ...] = (TransientError, sqlite3.OperationalError)


class Connection(Protocol):
    """What the store and the services ask of a connection (``sqlite3.Connection`` is one)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Location:
    """A database: a SQLite file, or a schema in a PostgreSQL database."""

    url: str
    schema: str = "public"

    @property
    def dialect(self) -> str:
        return POSTGRESQL if self.url.startswith(("postgresql:", "postgres:")) else SQLITE

    @property
    def absent(self) -> bool:
        """A SQLite file not made yet (nothing ever ran there); a PostgreSQL schema may
        be absent too, but that takes asking the server."""
        return self.dialect == SQLITE and not self.path.exists()

    @property
    def path(self) -> Path:
        """The SQLite file."""
        if self.dialect != SQLITE:
            raise ConfigError(f"{self} is not a SQLite database")
        return Path(self.url.removeprefix("sqlite:///"))

    def __str__(self) -> str:
        if self.dialect == SQLITE:
            return str(self.path)
        return f"{redact(self.url)} (schema {self.schema})"


def location(target: Location | Path | str, schema: str = "public") -> Location:
    """``target`` as a :class:`Location`: a URL, a path to a SQLite file, or one already."""
    if isinstance(target, Location):
        return target
    text = str(target)
    if isinstance(target, Path) or "://" not in text:
        return Location(f"sqlite:///{text}")
    if not text.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            f"unsupported database URL {redact(text)!r}: use sqlite:///PATH or postgresql://..."
        )
    return Location(text, schema)


def redact(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def connect(target: Location | Path | str, readonly: bool = False) -> Connection:
    """Open the database at ``target`` (creating a SQLite file, or a PostgreSQL schema,
    where there is none yet)."""
    where = location(target)
    if where.dialect == SQLITE:
        return sqlite.connect(where.path, readonly=readonly)
    try:
        from saga_core import postgres
    except ImportError as exc:
        raise ConfigError(
            f"{where} needs the PostgreSQL driver: install the project with its postgres "
            f"extra, pip install '.[postgres]' ({exc})"
        ) from None
    return postgres.connect(where.url, where.schema)


def unreachable(url: str, timeout: int = 3) -> str | None:
    """Why the PostgreSQL server at ``url`` does not answer (None: it does)."""
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=timeout).close()
    except Exception as exc:
        return f"no PostgreSQL answers at {redact(url)}: {exc}"
    return None


def missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` says a table (or the schema holding it) is not there."""
    if isinstance(exc, sqlite3.OperationalError):
        return "no such table" in str(exc)
    return getattr(exc, "sqlstate", None) == "42P01"  # PostgreSQL's undefined_table


def dialect(conn: Connection) -> str:
    return SQLITE if isinstance(conn, sqlite3.Connection) else POSTGRESQL


def for_update(conn: Connection, skip_locked: bool = False) -> str:
    """The clause that row-locks what a ``SELECT`` reads, until the transaction ends: none
    on SQLite, where a write transaction holds the whole database already.
    ``skip_locked`` leaves out rows another transaction holds, instead of waiting."""
    if dialect(conn) == SQLITE:
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


def advisory_number(namespace: str, key: str) -> int:
    """A PostgreSQL advisory lock's number for ``key`` (64 bits of its hash, signed), apart
    for each ``namespace``."""
    digest = hashlib.sha256(f"{namespace}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def try_lock_key(conn: Connection, namespace: str, key: str) -> Any:
    """Hold ``key`` until the transaction ends, against every other transaction that locks
    it, if no other holds it now: the rows of a key that does not exist yet cannot be
    locked. Returns the pending answer for :func:`key_taken`, to read after sending what
    follows (in a pipeline, PostgreSQL answers it all in one round trip). On SQLite, where
    a write transaction holds the whole database, there is nothing to take: always taken."""
    if dialect(conn) == SQLITE:
        return None
    return conn.execute("SELECT pg_try_advisory_xact_lock(?)", (_key_number(conn, namespace, key),))


def claim_key(conn: Connection, namespace: str, key: str) -> Any:
    """Hold ``key`` until the transaction ends, as :func:`try_lock_key` does, or, where
    another transaction holds it, fail this one at once: on PostgreSQL everything sent
    after it in the pipeline is then skipped, so a run can send its writes without waiting
    for the lock's answer. Returns the pending answer for :func:`claim_refused`, to ask
    once the transaction failed. On SQLite, nothing to take, as for ``try_lock_key``."""
    if dialect(conn) == SQLITE:
        return None
    # a division by zero is the one way plain SQL has to fail a statement on a condition;
    # the comment goes with it into the server's log
    return conn.execute(
        "SELECT 1 / pg_try_advisory_xact_lock(?)::int /* zero: another run holds the key */",
        (_key_number(conn, namespace, key),),
    )


def _key_number(conn: Connection, namespace: str, key: str) -> int:
    # advisory locks are the whole database's: the schema keeps each owner's keys apart
    return advisory_number(f"{namespace}@{getattr(conn, 'schema', '')}", key)


def claim_refused(answer: Any) -> bool:
    """Whether :func:`claim_key` failed its transaction: another one holds the key."""
    return answer is not None and getattr(answer, "sqlstate", None) == "22012"


def key_taken(answer: Any) -> bool:
    """Whether :func:`try_lock_key` took its key."""
    return answer is None or bool(answer.fetchone()[0])


def pipeline(conn: Connection) -> AbstractContextManager[Any]:
    """Statements sent together, each answer read when needed (PostgreSQL: one round trip
    for what is sent before a result is read); on SQLite, nothing to gain."""
    return conn.pipeline() if dialect(conn) != SQLITE else nullcontext()  # type: ignore[attr-defined]


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: one parameter per value, for ``IN (...)``."""
    return ", ".join("?" * len(values))


#: The fewest rows :func:`insert_many` and :func:`update_many` write in one statement on
#: PostgreSQL. Fewer go a statement each, prepared: one statement, planned for as few as
#: 16 rows (a batch of 8 outcomes), cost the server as much as the statements it replaced;
#: from a few dozen on it is cheaper (the store's batches of 200: 13-15 % more a second).
MANY_ROWS = 64
#: The most parameters one such statement takes (PostgreSQL's limit is 65,535).
MANY_PARAMETERS = 20_000


def insert_many(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    tail: str = "",
) -> None:
    """Insert ``rows`` (their values as ``columns`` lists them) into ``table``, each
    statement ending with ``tail`` (an ``ON CONFLICT`` clause, say; no two of the rows may
    conflict).

    On PostgreSQL many rows go in one statement: a statement per row cost the client half
    as much CPU again per row (11.6 µs against 7.6), and the server a little more. On
    SQLite, in process, a statement per row costs no more."""
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    row = f"({marks(columns)})"
    if dialect(conn) == SQLITE or len(rows) < MANY_ROWS:
        conn.executemany(head + row + tail, rows)
        return
    for part in _parts(rows, len(columns)):
        sql = head + ", ".join([row] * len(part)) + tail
        conn.execute(planned_each_time(sql), [value for r in part for value in r])


def update_many(
    conn: Connection,
    table: str,
    columns: Sequence[tuple[str, str]],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Set ``columns`` (each a name and its SQL type) in the rows of ``table`` that
    ``keys`` name: each of ``rows`` is the new values as ``columns`` lists them, then its keys.
    No two of ``rows`` may name the same row (in one statement, only one of them would be
    written).

    On PostgreSQL, one statement for many rows (``UPDATE ... FROM (VALUES ...)``, each
    value cast to its column's type: a column of nothing but NULLs would be text); on
    SQLite, a statement per row, as for :func:`insert_many`."""
    if dialect(conn) == SQLITE or len(rows) < MANY_ROWS:
        sets = ", ".join(f"{name} = ?" for name, _ in columns)
        conn.executemany(
            f"UPDATE {table} SET {sets} WHERE {' AND '.join(f'{k} = ?' for k in keys)}", rows
        )
        return
    sets = ", ".join(f"{name} = v.{name}::{kind}" for name, kind in columns)
    names = ", ".join([*(name for name, _ in columns), *keys])
    where = " AND ".join(f"{table}.{k} = v.{k}" for k in keys)
    row = f"({marks(rows[0])})"
    for part in _parts(rows, len(rows[0])):
        sql = (
            f"UPDATE {table} SET {sets} FROM (VALUES {', '.join([row] * len(part))}) "
            f"AS v({names}) WHERE {where}"
        )
        conn.execute(planned_each_time(sql), [value for r in part for value in r])


def _parts(rows: Sequence[Sequence[Any]], width: int) -> Iterator[Sequence[Sequence[Any]]]:
    per = max(1, MANY_PARAMETERS // max(width, 1))
    for start in range(0, len(rows), per):
        yield rows[start : start + per]


#: The end of a statement PostgreSQL plans each time it runs (:func:`planned_each_time`).
PLANNED_EACH_TIME = " /* planned each time */"


def planned_each_time(sql: str) -> str:
    """``sql``, planned by PostgreSQL each time it runs, never from a plan kept for it: a
    read of many keys at once, whose best plan depends on how many it asks for and on how
    big the table has grown. A kept plan is chosen once, and on a new store, before the
    table's first ANALYZE, that is a scan of the whole table, kept while the table grows
    (seen in the bench: each batch's read scanned 2,000 steps to find 12). SQLite plans
    such a read by its indexes whatever the table's size."""
    return sql + PLANNED_EACH_TIME


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises.

    On SQLite it takes the database's write lock up front (``BEGIN IMMEDIATE``), so two
    writers never deadlock on a lock upgrade; on PostgreSQL each transition locks the rows
    it changes instead (:func:`for_update`). Inside another transaction it is a savepoint:
    rolled back alone if it raises, committed with the enclosing transaction.
    """
    if conn.in_transaction:
        with _savepoint(conn):
            yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE" if dialect(conn) == SQLITE else "BEGIN")
    except sqlite3.OperationalError as exc:
        raise TransientError(f"database busy: {exc}") from exc
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def _savepoint(conn: Connection) -> Iterator[None]:
    conn.execute("SAVEPOINT step")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT step")
        conn.execute("RELEASE SAVEPOINT step")
        raise
    else:
        conn.execute("RELEASE SAVEPOINT step")
