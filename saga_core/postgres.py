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

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import errors, pq
from psycopg.abc import Transformer as AdaptContext
from psycopg.adapt import PyFormat, Transformer
from psycopg.generators import fetch_many, pipeline_communicate
from psycopg.pq import TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.types.string import TextLoader

from saga_core.database import PLANNED_EACH_TIME
from saga_core.errors import ConfigError, DatabaseUnavailable, TransientError

CONNECT_TIMEOUT = 10

TUPLES_OK, COMMAND_OK = pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK
FATAL_ERROR, PIPELINE_ABORTED = pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED
PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC

#: Statements a connection prepares at most (the rest run unprepared): each keeps its plan
#: in the server's memory for as long as the connection lives.
PREPARED_MAX = 200


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


@lru_cache(maxsize=512)
def _index(names: tuple[bytes, ...]) -> dict[str, int]:
    return {name.decode(): i for i, name in enumerate(names)}


def _maker(index: dict[str, int]) -> Any:
    return lambda values: Row(values, index)


@lru_cache(maxsize=512)
def _numbered(sql: str) -> bytes:
    """``?`` parameters as PostgreSQL's ``$1, $2, ...``."""
    parts = sql.split("?")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], 1):
        out.append(f"${n}{part}")
    return "".join(out).encode()


def options(schema: str) -> str:
    """A connection's settings: its schema, and text as UTF-8 whatever the database's own
    encoding (psycopg hands over bytes from a SQL_ASCII database)."""
    return f"-c search_path={schema} -c client_encoding=UTF8"


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy names it with psycopg 3 as the driver."""
    return "postgresql+psycopg://" + url.partition("://")[2]


def connect(url: str, schema: str) -> PgConnection:
    return PgConnection(url, schema)


class Result:
    """A statement's answer: its rows, and how many rows it changed. In a pipeline it
    comes when first read, which sends everything queued and waits for all of it."""

    __slots__ = ("_conn", "_count", "_error", "_names", "_ready", "_rows")

    def __init__(self, conn: PgConnection):
        self._conn = conn
        self._rows: list[Row] = []
        self._count = 0
        self._error: BaseException | None = None
        self._ready = False
        self._names: dict[str, int] = {}

    def _wait(self) -> None:
        if not self._ready:
            self._conn._sync()
        if self._error is not None:
            raise self._error

    def fetchone(self) -> Row | None:
        self._wait()
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Row]:
        self._wait()
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        self._wait()
        return self._count

    @property
    def sqlstate(self) -> str | None:
        """The SQLSTATE of this statement's own failure, once answered (None: it did not
        fail, or has not been answered yet)."""
        return getattr(self._error, "sqlstate", None) if self._ready else None

    @property
    def description(self) -> list[tuple[str, None, None, None, None, None, None]] | None:
        """The columns, as DB-API names them (only the name is known)."""
        self._wait()
        return [(name, None, None, None, None, None, None) for name in self._names] or None

    def _take(self, results: list[PGresult], tx: AdaptContext, encoding: str) -> None:
        """Read this statement's results as they came (one, unless it was refused)."""
        self._ready = True
        for res in results:
            status = res.status
            if status == TUPLES_OK:
                index = self._names = _index(tuple(res.fname(i) for i in range(res.nfields)))
                tx.set_pgresult(res)
                self._rows.extend(tx.load_rows(0, res.ntuples, _maker(index)))
                self._count += res.ntuples
            elif status == COMMAND_OK:
                self._count += res.command_tuples or 0
            elif status == FATAL_ERROR:
                self._error = errors.error_from_result(res, encoding=encoding)
            elif status == PIPELINE_ABORTED:
                self._error = errors.PipelineAborted("an earlier statement failed")


class _Prepared(Result):
    """The answer to preparing a statement: where it fails, the name is not kept."""

    __slots__ = ("_key",)

    def __init__(self, conn: PgConnection, key: tuple[str, tuple[int, ...]]):
        super().__init__(conn)
        self._key = key

    def _take(self, results: list[PGresult], tx: AdaptContext, encoding: str) -> None:
        super()._take(results, tx, encoding)
        if self._error is not None:
            self._conn._statements.pop(self._key, None)


class PgConnection:
    """One connection to PostgreSQL, in ``schema``, used by one thread at a time.

    Statements go to the server by libpq's pipeline directly, prepared from their second run
    on, with psycopg's type adaptation: psycopg's cursors cost several times the
    client's CPU per statement, which on a worker's step is most of what PostgreSQL costs
    over SQLite. Every statement is queued at once; the queue goes with a sync point when a
    result is read, or, outside :meth:`pipeline`, at once.
    """

    def __init__(self, url: str, schema: str):
        self.url, self.schema = url, schema
        self._conn: psycopg.Connection[Any] | None = None
        self._piped = 0
        #: Answers waited for so far (each one a round trip to the server).
        self.round_trips = 0
        self._open()

    def _open(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                options=options(self.schema),
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        except psycopg.ProgrammingError as exc:  # a URL psycopg cannot read
            raise ConfigError(f"bad PostgreSQL URL: {exc}") from exc
        for json_type in ("json", "jsonb"):
            conn.adapters.register_loader(json_type, TextLoader)
        self._conn = conn
        self._tx = Transformer(conn)
        self._statements: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._seen: dict[tuple[str, tuple[int, ...]], bool] = {}
        self._awaited: deque[Result] = deque()
        self._prepared = 0
        self._ending = False
        self._opening = False  # a BEGIN sent, its answer not read yet
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
        return self._opening or conn.pgconn.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Result:
        if sql.startswith("ROLLBACK"):
            return self._rollback(sql)
        result = Result(self)
        self._send(sql, parameters, result)
        self._ending = self._ending or sql == "COMMIT"
        if sql == "BEGIN":
            # Nothing to read in its answer: it goes with the transaction's first statement
            # that is read, a round trip less for every transaction.
            self._opening = True
        elif not self._piped:
            self._sync()
        return result

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Result:
        """``sql`` once for each of ``parameters``, in one round trip; the result counts
        the rows they changed together."""
        result = Result(self)
        for each in parameters:
            self._send(sql, each, result)
        if not self._piped:
            self._sync()
        return result

    def _send(self, sql: str, parameters: Sequence[Any], result: Result) -> None:
        try:
            pgconn = self.connection.pgconn
            if pgconn.pipeline_status == pq.PipelineStatus.OFF:
                pgconn.enter_pipeline_mode()
            values = self._tx.dump_sequence(parameters, [PyFormat.TEXT] * len(parameters))
            key = (sql, tuple(self._tx.types or ()) if parameters else ())
            name = self._statements.get(key)
            if name is None and self._seen.pop(key, False) and self._prepared < PREPARED_MAX:
                self._prepared += 1
                name = self._statements[key] = b"s%d" % self._prepared
                pgconn.send_prepare(name, _numbered(sql), key[1] or None)
                self._awaited.append(_Prepared(self, key))
            if name is None:
                # a statement's first run is not prepared: one-offs (an IN list of a size
                # seen once) would each keep a plan in the server for the connection's life
                if not sql.endswith(PLANNED_EACH_TIME):  # those never are
                    if len(self._seen) >= PREPARED_MAX:
                        self._seen.clear()  # many one-offs: start counting afresh
                    self._seen[key] = True
                pgconn.send_query_params(_numbered(sql), values or None, key[1] or None)
            else:
                pgconn.send_query_prepared(name, values or None)
            self._awaited.append(result)
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from exc

    def _sync(self) -> None:
        """Send what is queued with a sync point and read every answer up to it; raise the
        first statement's failure, as :meth:`execute` tells it."""
        awaited, self._awaited = self._awaited, deque()
        ending, self._ending = self._ending, False
        self._opening = False
        if not awaited:
            return  # nothing sent (or the connection it went on is gone): nothing to open
        conn = self.connection
        pgconn = conn.pgconn
        self.round_trips += 1
        try:
            pgconn.pipeline_sync()
            answers = conn.wait(pipeline_communicate(pgconn, deque()))
            while not answers or answers[-1][0].status != PIPELINE_SYNC:
                answers.append(conn.wait(fetch_many(pgconn)))
            pgconn.exit_pipeline_mode()
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from exc
        except BaseException:
            self.close()  # cut off mid-answer (an interrupt): its state is not to be trusted
            raise
        encoding = pgconn._encoding
        failure = None
        for results, target in zip(answers, awaited, strict=False):
            target._take(results, self._tx, encoding)
            if failure is None and isinstance(target._error, psycopg.DatabaseError):
                failure = target._error
        if failure is not None:
            if ending and pgconn.transaction_status == TransactionStatus.INERROR:
                # the failure made the server skip the COMMIT: the transaction is over
                # for the caller, so it is rolled back here rather than left open
                self._send("ROLLBACK", (), Result(self))
                self._sync()
            if isinstance(failure, psycopg.OperationalError):
                raise self._failure(failure) from failure
            raise failure

    def _rollback(self, sql: str) -> Result:
        """Roll back (to a savepoint) at once: a statement that failed in a pipeline makes
        the server skip everything after it up to the sync point, a rollback too, which
        would leave the transaction open and failed."""
        nothing = Result(self)
        nothing._ready = True
        if self._conn is None or self._conn.closed:
            return nothing  # the connection broke in the transaction: nothing to roll back
        try:
            self._sync()
        except psycopg.Error:
            pass  # the failure that brought the rollback is already on its way up
        except TransientError:
            if self._conn is None:
                return nothing
        result = Result(self)
        self._send(sql, (), result)
        self._sync()
        return result

    def _lost(self, exc: psycopg.OperationalError) -> DatabaseUnavailable:
        """The connection failed while statements were on their way: what reached the
        server is not known, so the connection is dropped (its transaction with it)."""
        self.close()
        return DatabaseUnavailable(f"PostgreSQL went away: {exc}")

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
        """Statements sent without waiting for each one's answer, until a result is read
        or the block ends. A failure surfaces there, told as :meth:`execute` tells it (the
        server away, or a passing failure)."""
        self._piped += 1
        try:
            yield
        except BaseException:
            self._piped -= 1
            if not self._piped and self._conn is not None:
                # the block's own failure is the one to tell
                with suppress(psycopg.Error, TransientError):
                    self._sync()
            raise
        self._piped -= 1
        if not self._piped:
            self._sync()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._awaited = deque()  # its answers will never come
            self._opening = False


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
