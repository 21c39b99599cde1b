"""Hosts whose clocks disagree judge leases by the database server's clock (PostgreSQL: the store
that spans hosts). A lease stamped on one host was judged expired on a host whose clock ran ahead:
its reaper marked the live run lost, and its worker took the live holder's slot past the cap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, make_url

from store import db
from store.db import DatabaseClock
from store.ledger import NewRun, SqlLedger, Worker
from tests.services import Postgres
from tests.support.procs import reset_postgres


def _run(key: str) -> NewRun:
    return NewRun("test-capped", key, key, "c", "cli", "queue", None, {})


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[Engine]:
    reset_postgres(postgres.url)
    engine = db.make_engine(postgres.url)
    yield engine
    engine.dispose()


def test_a_host_whose_clock_runs_ahead_neither_reaps_a_live_run_nor_takes_its_slot(engine: Engine) -> None:
    on_time = SqlLedger(engine)
    ahead = SqlLedger(
        engine, clock=DatabaseClock(engine, host=lambda: datetime.now(UTC) + timedelta(seconds=45))
    )
    for key in ("live", "next"):
        on_time.record_dispatch(_run(key))
    held = on_time.claim(_run("live"), cap=1, lease_s=30, worker=Worker("a", 1), max_attempts=5)
    assert held.outcome == "claimed"
    assert ahead.reap() == 0
    assert (
        ahead.claim(_run("next"), cap=1, lease_s=30, worker=Worker("b", 2), max_attempts=5).outcome
        == "capped"
    )
    assert on_time.get("live").status == "running"  # type: ignore[union-attr]


def test_the_clock_reads_the_servers_time_once_a_minute_and_keeps_the_last_when_it_cannot(
    engine: Engine, postgres: Postgres
) -> None:
    host = datetime(2001, 1, 1, tzinfo=UTC)
    clock = DatabaseClock(engine, host=lambda: host)
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=5)
    offset = clock() - host
    nowhere = db.make_engine(make_url(postgres.url).set(port=1).render_as_string(hide_password=False))
    try:
        assert DatabaseClock(nowhere, host=lambda: host)() == host  # nothing measured yet: this host's
    finally:
        nowhere.dispose()
    host += timedelta(hours=1)
    assert clock() - host == offset  # within the minute: the same correction
