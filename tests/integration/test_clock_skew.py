"""Leases are stamped and judged by the database server's clock (PostgreSQL: the store that spans
hosts). They were stamped by each host's own: a host whose clock ran ahead judged a live lease
expired, so its reaper marked the run lost, its worker took the holder's slot past the cap, and a
copy waiting for the holder looked again every 100 ms."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage
from sqlalchemy import Engine, event, exc, text

from actors import attempt
from actors.dedup import Dedup
from offload.wiring import Runtime
from store import db
from store import ledger as ledger_module
from store.db import DatabaseClock
from store.ledger import NewRun, SqlLedger, Worker
from tests.services import Postgres
from tests.support.guards import RecordingBroker
from tests.support.procs import reset_postgres

AHEAD = timedelta(hours=1)


class _Ahead(datetime):
    """This host's wall clock, an hour ahead of the server's."""

    @classmethod
    def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
        return datetime.now(UTC) + AHEAD


def _run(key: str, job: str = "test-capped") -> NewRun:
    return NewRun(job, key, key, "c", "cli", "queue", None, {})


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    """PostgreSQL only: SQLite's server is this host, and its clock this host's."""
    reset_postgres(postgres.url)
    return postgres.url


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[Engine]:
    reset_postgres(postgres.url)
    engine = db.make_engine(postgres.url)
    yield engine
    engine.dispose()


def _server_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        at: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return at


def test_a_host_whose_clock_runs_ahead_neither_reaps_a_live_run_nor_takes_its_slot(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_time = SqlLedger(engine)
    for key in ("live", "next"):
        on_time.record_dispatch(_run(key))
    held = on_time.claim(_run("live"), cap=1, lease_s=30, worker=Worker("a", 1), max_attempts=5)
    assert held.outcome == "claimed"
    monkeypatch.setattr(db, "datetime", _Ahead)
    monkeypatch.setattr(ledger_module, "datetime", _Ahead)  # this host's clock, wherever it is read
    ahead = SqlLedger(engine)
    assert abs(ahead.now() - _server_now(engine)) < timedelta(seconds=1)
    assert ahead.reap() == 0
    second = ahead.claim(_run("next"), cap=1, lease_s=30, worker=Worker("b", 2), max_attempts=5)
    assert second.outcome == "capped"
    assert on_time.get("live").status == "running"  # type: ignore[union-attr]


def test_threads_that_read_the_clock_during_its_first_reading_wait_for_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "datetime", _Ahead)
    clock = DatabaseClock(engine)
    read = clock._read

    def slow_read() -> None:
        time.sleep(0.2)
        read()

    monkeypatch.setattr(clock, "_read", slow_read)
    seen: list[datetime] = []
    threads = [threading.Thread(target=lambda: seen.append(clock())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server = _server_now(engine)
    assert all(abs(at - server) < timedelta(seconds=2) for at in seen), seen


def test_a_database_down_at_the_first_reading_is_read_again_soon_after(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "datetime", _Ahead)
    monkeypatch.setattr(DatabaseClock, "RETRY_S", 0.1)
    down = [True]

    @event.listens_for(engine, "do_connect")
    def refuse(*_: object) -> None:
        if down[0]:
            raise exc.OperationalError("connect", {}, Exception("connection refused"))

    clock = DatabaseClock(engine)
    assert clock() - datetime.now(UTC) > AHEAD - timedelta(seconds=1)  # unread: this host's time
    down[0] = False
    time.sleep(0.2)
    assert abs(clock() - _server_now(engine)) < timedelta(seconds=1)


def test_a_copy_waiting_for_a_live_holder_waits_for_the_lease_by_the_servers_clock(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its wait was the lease's end, by the server's clock, less now by this host's."""
    monkeypatch.setattr(attempt, "now_ms", lambda: int((time.time() + AHEAD.total_seconds()) * 1000))
    ledger, broker = SqlLedger(runtime.engine), RecordingBroker(runtime.broker)
    key = "test-crashable:k"
    ledger.record_dispatch(_run(key, "test-crashable"))
    held = ledger.claim(_run(key, "test-crashable"), cap=1, lease_s=30, worker=Worker("a", 1), max_attempts=4)
    assert held.token is not None
    copy = MessageProxy(runtime.actors["test-crashable"].message(key, {}).copy(message_id=key))
    with pytest.raises(SkipMessage):
        Dedup(ledger=ledger).before_process_message(broker, copy)
    [(_, delay)] = broker.sent
    assert delay is not None and delay > 1_000, delay
