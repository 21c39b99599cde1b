"""Engines, sessions, migrations and the hot statements' executor, for SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import re
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Engine, create_engine, event, exc, make_url, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

from store.errors import StoreError, StoreUnavailable

SQLITE_BUSY_TIMEOUT_MS = 5_000
#: Connections older than this are replaced before their next use (an idle one may have been dropped
#: silently on the way, by a firewall or a NAT).
RECYCLE_S = 1800.0
#: libpq's connection settings, each unless the URL names it: a server that goes silent (a cable
#: pulled, a host gone without closing its connections) fails the statement waiting on it in about
#: half a minute, as StoreUnavailable, instead of after the kernel's quarter of an hour.
PG_CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "30",  # an idle connection is probed after 30 s,
    "keepalives_interval": "10",  # then every 10 s,
    "keepalives_count": "3",  # and given up after 3 unanswered probes
    "tcp_user_timeout": "30000",  # ms that sent data may wait for the server's acknowledgement
}
_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine tuned per backend: SQLite in WAL mode with serialized writers; a PostgreSQL pool."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from the sqlite3 module so every transaction is
            # BEGIN IMMEDIATE: a reader that later writes can then never fail with SQLITE_BUSY.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        # SQLite has one writer at a time. Threads of this process queue for it here rather than
        # sleeping in SQLite's busy handler (whose back-off makes the tail latency long).
        writer = _Writer()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            try:
                if not writer.take(timeout_s=SQLITE_BUSY_TIMEOUT_MS / 1000):
                    raise StoreUnavailable("database is locked (waited for another writer of this process)")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                writer.give_back()
                raise

        # A transaction ends with a commit or rollback, or with its connection going back to the
        # pool (one an interrupt made SQLAlchemy invalidate is dropped without either).
        for ended in ("commit", "rollback", "checkin"):
            event.listen(engine, ended, lambda *_: writer.give_back())

        @event.listens_for(engine, "handle_error")
        def _interrupted(ctx: ExceptionContext) -> None:
            # An interrupt (a time limit) in a statement: the dropped connection's cursor lives on in
            # the traceback's frames, and with it SQLite's lock, until the garbage collector finds it.
            cursor = ctx.execution_context.cursor if ctx.execution_context is not None else None
            if not isinstance(ctx.original_exception, Exception) and cursor is not None:
                cursor.close()

        return engine
    # No pre-ping: it costs a round trip per transaction. A connection that died with its server
    # fails its statement with StoreUnavailable, the pool drops it, and the guards defer or retry.
    pg_url = make_url(url)
    pg_url = pg_url.update_query_dict({k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in pg_url.query})
    return create_engine(pg_url, pool_recycle=RECYCLE_S, pool_size=pool_size, max_overflow=pool_size)


class _Writer:
    """The SQLite writer of this process, held by one thread from a transaction's BEGIN to its end.

    A thread runs one transaction at a time (a second would wait for the writer it holds). Who
    holds it is recorded under the mutex that grants it, so an interrupt raised in a thread as it
    is granted (a job's time limit) cannot leave it held by nobody; and a thread whose transaction
    ended unseen takes it again at its next BEGIN, rather than waiting for itself.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holder: int | None = None

    def take(self, *, timeout_s: float) -> bool:
        me = threading.get_ident()
        with self._changed:
            if self._holder != me and not self._changed.wait_for(lambda: self._holder is None, timeout_s):
                return False
            self._holder = me
            return True

    def give_back(self) -> None:
        """Free the writer if this thread holds it."""
        with self._changed:
            if self._holder == threading.get_ident():
                self._holder = None
                self._changed.notify_all()  # all: a waiter woken and then interrupted takes nothing


_NAMED = re.compile(r"%\((\w+)\)s")


class PgStatement:
    """A PostgreSQL statement written with `%(name)s` parameters, numbered once ($1, $2, ...) for `Direct`.

    `Direct` sends the parameters as text and lets the server type each one from where it is
    used (a column, a function argument): where nothing fixes its type (`SELECT %(x)s`,
    `%(x)s IS NULL`), write a cast. `sql` keeps the named form, for running the same statement
    through SQLAlchemy.
    """

    _names = itertools.count()

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.sql = sql
        self.numbered = _NAMED.sub(number, sql).encode()  # as libpq takes it: encoded once, not per call
        self.names = tuple(names)
        self.prepared_as = f"offload_{next(self._names)}".encode()
        self.formats = [PyFormat.TEXT] * len(names)  # typed by the server from where each one is used


class DatabaseClock:
    """UTC time by the database server's clock.

    A lease is stamped on one host and judged on others (a claim taking over an expired slot, the
    reaper): a host whose clock ran ahead would judge a live lease expired, and run a second job
    past its cap. This clock reads the server's (`clock_timestamp()`, less half the round trip)
    every `RESYNC_S`, and runs on this host's monotonic clock in between: neither a skewed nor a
    stepped host clock moves it. Until the server first answers it is this host's clock, and it
    asks again `RETRY_S` later.

    Parameters:
      engine: a PostgreSQL engine.
    """

    RESYNC_S = 60.0
    RETRY_S = 1.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._synced: tuple[datetime, float] | None = None  # the server's time, and monotonic time then
        self._next_read = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        # The first reading is waited for; a later one is taken by one thread while the rest go on.
        if time.monotonic() >= self._next_read and self._lock.acquire(blocking=self._synced is None):
            try:
                if time.monotonic() >= self._next_read:
                    self._read()
            finally:
                self._lock.release()
        synced = self._synced
        if synced is None:
            return datetime.now(UTC)
        server, at = synced
        return server + timedelta(seconds=time.monotonic() - at)

    def _read(self) -> None:
        try:
            with self._engine.connect() as conn:
                sent = time.monotonic()
                server: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
                received = time.monotonic()
        except exc.SQLAlchemyError:
            self._next_read = time.monotonic() + self.RETRY_S
            return
        self._synced = (server.astimezone(UTC), (sent + received) / 2)
        self._next_read = received + self.RESYNC_S


class Direct:
    """Runs one-row PostgreSQL statements in autocommit, each thread on a connection of its own.

    For the hot paths. Each statement is prepared once per connection and run through psycopg's
    libpq layer (`psycopg.pq`), its parameters adapted by psycopg's own dumpers and its row by its
    loaders: SQLAlchemy's execution, its pool's checkout and reset, and psycopg's cursor each cost
    CPU on the same scale as the round trip, and libpq waits for the server without the GIL. A
    connection that failed anything is closed, and the thread's next statement connects anew, as
    does one older than `recycle_s`. The connections close with their thread, or all at once when
    the engine is disposed.

    Parameters:
      engine: a PostgreSQL engine; its URL and connect arguments make the connections.
      recycle_s: the age at which a connection is replaced, as the engine's pool does.
    """

    def __init__(self, engine: Engine, *, recycle_s: float = RECYCLE_S) -> None:
        self._engine = engine
        self._recycle_s = recycle_s
        self._local = threading.local()
        self._open: weakref.WeakSet[_Own] = weakref.WeakSet()
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    def run(self, statement: PgStatement, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Run `statement` with `params` and return its one row, committed."""
        own: _Own | None = getattr(self._local, "own", None)
        if own is None or own.conn.closed or time.monotonic() > own.recycle_at:
            if own is not None:
                own.close()
            own = self._local.own = self._connect()
        try:
            with own.busy:
                return own.run(statement, params)
        except BaseException as e:
            self._local.own = None
            own.close()
            if isinstance(e, psycopg.Error):
                raise _driver_error(e) from e
            raise

    def close(self) -> None:
        """Close every thread's idle connection; a later statement connects anew.

        A connection in the middle of a statement (a request that outlived a shutdown's grace) is
        left to its thread: closing it under the thread would free what libpq is still using.
        """
        for own in list(self._open):
            if own.busy.acquire(blocking=False):
                try:
                    own.conn.close()
                finally:
                    own.busy.release()

    def _connect(self) -> _Own:
        try:
            with translate_errors():
                pooled = self._engine.raw_connection()  # raises the driver's own errors when it must connect
        except psycopg.Error as e:
            raise _driver_error(e) from e
        conn = pooled.driver_connection
        assert isinstance(conn, psycopg.Connection), "Direct is for PostgreSQL"
        pooled.detach()  # ours from now on: the pool neither counts nor resets it
        conn.autocommit = True
        own = _Own(conn, recycle_at=time.monotonic() + self._recycle_s)
        self._open.add(own)
        return own


class _Own:
    """A thread's connection and the statements prepared on it; closed with the thread's last reference."""

    def __init__(self, conn: psycopg.Connection[Any], *, recycle_at: float) -> None:
        self.conn = conn
        self.recycle_at = recycle_at
        self.adapt = Transformer(conn)
        self.prepared: set[bytes] = set()
        self.busy = threading.Lock()  # held while a statement runs, and to close
        weakref.finalize(self, conn.close)

    def run(self, statement: PgStatement, params: Mapping[str, Any]) -> tuple[Any, ...]:
        pgconn, name = self.conn.pgconn, statement.prepared_as
        if name not in self.prepared:
            _check(self.conn, pgconn.prepare(name, statement.numbered))
            self.prepared.add(name)
        values = self.adapt.dump_sequence([params[n] for n in statement.names], statement.formats)
        # None is SQL NULL here as in psycopg's own calls, though the stub's type leaves it out
        result = _check(self.conn, pgconn.exec_prepared(name, cast(Sequence[bytes], values)))
        if result.ntuples != 1:
            raise psycopg.ProgrammingError(f"a statement that returns one row returned {result.ntuples}")
        self.adapt.set_pgresult(result)
        return self.adapt.load_row(0, tuple)

    def close(self) -> None:
        with self.busy:
            self.conn.close()


def _check(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> pq.abc.PGresult:
    """`result`, unless it is an error: then psycopg's exception for it (OperationalError if disconnected)."""
    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return result
    encoding = conn.info.encoding
    if conn.pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(result.get_error_message(encoding) or "the connection was lost")
    raise psycopg.errors.error_from_result(result, encoding)


def _driver_error(e: psycopg.Error) -> StoreError:
    if isinstance(e, psycopg.OperationalError):
        return StoreUnavailable(_first_line(e))
    return StoreError(_first_line(e))


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into StoreUnavailable (connection, lock) or StoreError (the rest)."""
    try:
        yield
    except exc.OperationalError as e:
        raise StoreUnavailable(_first_line(e)) from e
    except exc.DBAPIError as e:
        if e.connection_invalidated:
            raise StoreUnavailable(_first_line(e)) from e
        raise StoreError(_first_line(e)) from e
    except exc.SQLAlchemyError as e:
        raise StoreError(_first_line(e)) from e


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e)
    return text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str | None:
    """The newest migration's revision."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    with translate_errors():
        command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with translate_errors(), engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev
