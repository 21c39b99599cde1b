"""Faults in the worker path: SIGKILL mid-run, poison messages, and the database going away."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest

from offload.settings import Settings
from offload.wiring import Runtime, build
from store.errors import StoreUnavailable
from store.ledger import Worker
from tests.services import Postgres, Rabbit
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY
from tests.support.procs import Workers, effects, wait_for
from tests.support.proxy import Proxy


def status(runtime: Runtime, key: str) -> str | None:
    run = runtime.ledger.get(key)
    return run.status if run else None


def test_sigkilled_worker_run_is_redelivered_marked_lost_and_runs_once(
    runtime: Runtime, workers: Workers
) -> None:
    d = runtime.dispatcher.dispatch("test-crashable", trigger="cli", params={"sleep_s": 2.5})
    first = workers.start(threads=2)
    running = wait_for(  # claimed and holding its slot: the job body is under way
        lambda: (
            (r := runtime.ledger.get(d.dispatch_key))
            and r.status == "running"
            and runtime.leases.held("test-crashable") == 1
            and r
        ),
        what="running",
    )
    os.kill(running.worker_pid, signal.SIGKILL)
    first.wait(timeout=30)  # the dramatiq master stops when one of its workers dies
    assert runtime.leases.held("test-crashable") == 1, "the dead holder's slot is still leased"

    workers.start(threads=2)
    wait_for(lambda: status(runtime, d.dispatch_key) == "succeeded", timeout_s=60, what="the takeover")
    history = [(e.status, e.attempt) for e in runtime.ledger.events(d.dispatch_key)]
    assert history == [("queued", 0), ("running", 1), ("lost", 1), ("running", 2), ("succeeded", 2)]
    assert effects(runtime, d.dispatch_key) == 1
    assert runtime.leases.held("test-crashable") == 0


def test_poison_message_ends_dead_in_the_dead_letter_queue_while_others_flow(
    runtime: Runtime, workers: Workers, rabbit: Rabbit
) -> None:
    poison = runtime.dispatcher.dispatch("test-explode", trigger="cli")
    healthy = [runtime.dispatcher.dispatch("test-record", trigger="cli", params={"i": i}) for i in range(10)]
    workers.start(threads=4)
    wait_for(lambda: status(runtime, poison.dispatch_key) == "dead", timeout_s=60, what="dead")
    wait_for(lambda: rabbit.message_count("offload.test-explode.XQ") == 1, what="the dead letter")
    for d in healthy:
        wait_for(lambda d=d: status(runtime, d.dispatch_key) == "succeeded", what="healthy runs")
    dead = runtime.ledger.get(poison.dispatch_key)
    assert dead is not None and dead.attempt == 3 and dead.error_type == "RuntimeError"
    statuses = [e.status for e in runtime.ledger.events(poison.dispatch_key)]
    assert statuses == ["queued", "running", "retrying", "running", "retrying", "running", "dead"]


def _started(trace: Path, *, after: float, before: float) -> list[str]:
    if not trace.exists():
        return []
    lines = [line.split() for line in trace.read_text().splitlines()]
    return [key for event, key, _pid, at in lines if event == "start" and after <= float(at) <= before]


@pytest.fixture
def outage(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(settings the worker uses, cut(), restore()): the database goes away and comes back."""
    if settings.database_url.startswith("sqlite"):
        path = settings.database_url.removeprefix("sqlite:///")
        holder: dict[str, sqlite3.Connection] = {}

        def cut() -> None:  # an exclusive lock: every other connection times out as "database is locked"
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            holder["conn"] = conn

        def restore() -> None:
            holder.pop("conn").rollback()

        yield settings, cut, restore
        return
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = settings.model_copy(
        update={"database_url": url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)}
    )
    yield proxied, proxy.cut, proxy.restore
    proxy.close()


def test_database_outage_mid_run_runs_nothing_unguarded_and_loses_nothing(
    runtime: Runtime,
    workers: Workers,
    outage,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    worker_settings, cut, restore = outage
    trace = tmp_path / "trace"
    slow = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"sleep_s": 2.0})
    quick = [runtime.dispatcher.dispatch("test-record", trigger="cli", params={"i": i}) for i in range(5)]
    workers.settings = worker_settings
    workers.start(threads=1, OFFLOAD_TEST_TRACE=str(trace))
    wait_for(lambda: slow.dispatch_key in _started(trace, after=0, before=time.time()), what="the slow body")
    cut()
    down_at = time.time()
    time.sleep(8.0)
    up_at = time.time()
    restore()
    for d in [slow, *quick]:
        wait_for(lambda d=d: status(runtime, d.dispatch_key) == "succeeded", timeout_s=90, what="recovery")
    assert _started(trace, after=down_at, before=up_at) == [], "a job body ran while the database was away"
    for d in [slow, *quick]:
        assert effects(runtime, d.dispatch_key) == 1
    slow_run = runtime.ledger.get(slow.dispatch_key)
    assert slow_run is not None and slow_run.attempt >= 2, "the outage should have cut the slow run short"


@contextmanager
def behind_a_proxy(postgres: Postgres, rabbit: Rabbit) -> Iterator[tuple[Runtime, Proxy]]:
    """A runtime whose PostgreSQL connections go through a proxy the test can cut."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres.url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = Settings(
        database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), broker_url=rabbit.url
    )
    rt = build(proxied, registry=TEST_REGISTRY, ports=TEST_PORTS)
    try:
        yield rt, proxy
    finally:
        rt.close()
        proxy.close()


def test_dispatch_with_postgresql_down_raises_store_unavailable(postgres: Postgres, rabbit: Rabbit) -> None:
    with behind_a_proxy(postgres, rabbit) as (rt, proxy):
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            rt.dispatcher.dispatch("test-record", trigger="cli")


def test_a_claim_with_postgresql_away_is_store_unavailable_and_recovers(
    postgres: Postgres, rabbit: Rabbit
) -> None:
    """The one-statement claim bypasses SQLAlchemy's execution: its driver errors must still translate."""
    with behind_a_proxy(postgres, rabbit) as (rt, proxy):
        run = uuid.uuid4().hex  # the database is the session's: keys of its own
        news = [rt.dispatcher.prepare("test-record", trigger="cli", key=f"{run}:{i}") for i in range(3)]
        for new in news:
            rt.ledger.record_dispatch(new)

        def claim(i: int) -> str:
            return rt.ledger.claim(news[i], cap=8, lease_s=60, worker=Worker("h", 1), max_attempts=3).outcome

        assert claim(0) == "claimed"  # the pool now holds a connection through the proxy
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            claim(1)  # on the pooled connection
        with pytest.raises(StoreUnavailable):
            claim(1)  # connecting anew
        proxy.restore()
        assert claim(1) == "claimed" and claim(2) == "claimed"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_retry_the_broker_refuses_is_dead_lettered_and_the_run_says_dead(
    runtime: Runtime, rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dramatiq logs a failed retry publish from its after-hook and acks the message: it must not vanish."""
    d = runtime.dispatcher.dispatch("test-explode", trigger="cli")
    enqueue = runtime.broker.enqueue

    def refuse_retries(message: Any, *, delay: int | None = None) -> Any:
        if message.options.get("retries"):
            raise pika.exceptions.ChannelWrongStateError("publishing is refused")
        return enqueue(message, delay=delay)

    monkeypatch.setattr(runtime.broker, "enqueue", refuse_retries)
    worker = dramatiq.Worker(
        runtime.broker, queues={runtime.registry["test-explode"].queue}, worker_threads=1
    )
    worker.start()
    try:
        wait_for(lambda: status(runtime, d.dispatch_key) == "dead", timeout_s=30, what="dead")
    finally:
        worker.stop()
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and (run.attempt, run.error_type) == (1, "RuntimeError")
    wait_for(lambda: rabbit.message_count("offload.test-explode.XQ") == 1, what="the dead letter")


def test_permanent_error_is_dead_lettered_without_retries(
    runtime: Runtime, workers: Workers, rabbit: Rabbit
) -> None:
    d = runtime.dispatcher.dispatch("test-explode", trigger="cli", params={"permanent": True})
    workers.start(threads=2)
    wait_for(lambda: status(runtime, d.dispatch_key) == "dead", timeout_s=30, what="dead")
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and (run.attempt, run.error_type) == (1, "PermanentError")
    wait_for(lambda: rabbit.message_count("offload.test-explode.XQ") == 1, what="the dead letter")
