"""Direct, the hot statements' executor on PostgreSQL: a connection per thread, dropped on any failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine

from store import db
from store.db import Direct, PgStatement
from store.errors import StoreError, StoreUnavailable
from tests.services import Postgres
from tests.support.procs import wait_for

BACKEND = PgStatement("SELECT pg_backend_pid(), %(n)s::int + 1")
DIVIDE = PgStatement("SELECT 1 / %(n)s::int")
SLEEP = PgStatement("SELECT 1 FROM pg_sleep(%(s)s::float)")


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[Engine]:
    engine = db.make_engine(postgres.url)
    yield engine
    engine.dispose()


def gone(engine: Engine, pids: set[int]) -> bool:
    """Whether none of the server processes `pids` is left (a closed connection's ends a moment later)."""

    def alive() -> bool:
        with engine.connect() as conn:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(p)s)"
            return bool(conn.exec_driver_sql(sql, {"p": list(pids)}).scalar_one())

    return bool(wait_for(lambda: not alive(), timeout_s=5, what=f"server processes {pids} to end"))


def test_parameters_are_numbered_once_each_in_order_of_first_use() -> None:
    statement = PgStatement("SELECT %(b)s, %(a)s, %(b)s || %(c)s")
    assert statement.numbered == b"SELECT $1, $2, $1 || $3"
    assert statement.names == ("b", "a", "c")


def test_each_thread_keeps_a_connection_of_its_own_until_the_engine_is_disposed(engine: Engine) -> None:
    direct = Direct(engine)
    here = {direct.run(BACKEND, {"n": i})[0] for i in range(3)}
    assert len(here) == 1  # one connection, used again
    there: list[int] = []
    thread = threading.Thread(target=lambda: there.append(direct.run(BACKEND, {"n": 1})[0]))
    thread.start()
    thread.join()
    pids = here | set(there)
    assert len(pids) == 2 and direct.run(BACKEND, {"n": 41}) == (*here, 42)
    engine.dispose()
    assert gone(engine, pids)
    assert direct.run(BACKEND, {"n": 0})[0] not in pids  # and connects anew afterwards


def test_a_connection_older_than_the_recycle_age_is_replaced_before_its_next_statement(
    engine: Engine,
) -> None:
    direct = Direct(engine, recycle_s=0.2)
    (first, _), (again, _) = direct.run(BACKEND, {"n": 0}), direct.run(BACKEND, {"n": 0})
    time.sleep(0.3)
    (later, _) = direct.run(BACKEND, {"n": 0})
    assert first == again != later and gone(engine, {first})


def test_a_failed_statement_is_a_store_error_and_its_connection_is_not_used_again(engine: Engine) -> None:
    direct = Direct(engine)
    (before, _) = direct.run(BACKEND, {"n": 0})
    with pytest.raises(StoreError, match="division by zero") as failed:
        direct.run(DIVIDE, {"n": 0})
    assert isinstance(failed.value.__cause__, psycopg.errors.DivisionByZero)
    (after, _) = direct.run(BACKEND, {"n": 0})
    assert after != before and gone(engine, {before})
    assert direct.run(DIVIDE, {"n": 1}) == (1,)


def test_a_connection_the_server_ended_is_store_unavailable_and_the_next_statement_connects_anew(
    engine: Engine,
) -> None:
    direct = Direct(engine)
    (before, _) = direct.run(BACKEND, {"n": 0})
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": before})
    assert gone(engine, {before})
    with pytest.raises(StoreUnavailable):
        direct.run(BACKEND, {"n": 0})
    (after, n) = direct.run(BACKEND, {"n": 1})
    assert after != before and n == 2


def test_parameters_and_the_row_keep_their_types(engine: Engine) -> None:
    now = datetime.now(UTC)
    statement = PgStatement(
        "SELECT %(t)s::timestamptz, %(s)s::text, %(i)s::int, %(none)s::int IS NULL, %(j)s::json"
    )
    row = Direct(engine).run(statement, {"t": now, "s": "é'\\", "i": 7, "none": None, "j": '{"a": [1]}'})
    assert row == (now, "é'\\", 7, True, {"a": [1]})


def test_disposing_the_engine_lets_a_statement_in_flight_finish(engine: Engine) -> None:
    """A request that outlives a shutdown's grace keeps its connection until its statement ends."""
    direct = Direct(engine)
    (idle, _) = direct.run(BACKEND, {"n": 0})
    connected, rows, errors = threading.Event(), [], []

    def slow() -> None:
        direct.run(BACKEND, {"n": 0})
        connected.set()
        try:
            rows.append(direct.run(SLEEP, {"s": 0.5}))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=slow)
    thread.start()
    connected.wait(5)
    time.sleep(0.2)  # the sleep is on the server now
    engine.dispose()
    thread.join(5)
    assert (rows, errors) == ([(1,)], [])
    assert gone(engine, {idle})
