"""The domain jobs through the real pipeline: queue/inline parity, and a follow-up send cut by SIGKILL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from domain.email_events import HANDLERS
from domain.runs import FINAL
from offload.demo import JOB_ORDER, sample_events, seed, seed_appointments
from offload.settings import Settings
from offload.wiring import Runtime, build
from store import db
from store.local_providers import LocalCalendar, local_message_id
from tests.domain.conftest import add_client, add_sequence, start_sequences
from tests.services import Postgres, Rabbit
from tests.support.domain_data import PROVIDER_CLOCK_COLUMNS, Store, apply_events, open_store
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY
from tests.support.procs import Workers, wait_for

#: Friday 2026-03-06 10:00 EST; every job in both modes sees this `now`.
NOW = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)


@contextmanager
def second_database(like: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database on the same backend as `like`."""
    if like.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'inline.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        engine.dispose()
        yield url
        return
    pg = Postgres()
    pg.create()
    engine = db.make_engine(pg.url)
    db.upgrade(engine)
    engine.dispose()
    try:
        yield pg.url
    finally:
        pg.drop()


def seed_sample(store: Store) -> None:
    calendar = LocalCalendar(store.sessions)
    seed(store.uow, calendar, now=NOW)
    apply_events(store.uow, HANDLERS, sample_events(NOW), now=NOW)
    seed_appointments(store.uow, calendar, now=NOW)


def final(runtime: Runtime, key: str) -> Any:
    run = runtime.ledger.get(key)
    return run if run is not None and run.status in FINAL else None


def test_every_job_in_queue_and_inline_mode_leaves_identical_databases(
    runtime: Runtime, workers: Workers, settings: Settings, rabbit: Rabbit, tmp_path: Path
) -> None:
    with second_database(settings.database_url, tmp_path) as inline_url:
        queued, inline = open_store(settings.database_url), open_store(inline_url)
        seed_sample(queued)
        seed_sample(inline)
        assert queued.snapshot() == inline.snapshot()

        workers.start(processes=1, threads=2, OFFLOAD_TEST_NOW=NOW.isoformat())
        queue_results = {}
        for job in JOB_ORDER:
            d = runtime.dispatcher.dispatch(job, trigger="cli", inline=False)
            run = wait_for(lambda k=d.dispatch_key: final(runtime, k), timeout_s=60, what=f"{job} to finish")
            assert (run.status, run.mode) == ("succeeded", "queue"), workers.logs()
            queue_results[job] = run.result

        inline_runtime = build(
            settings.model_copy(update={"database_url": inline_url}), registry=TEST_REGISTRY, ports=TEST_PORTS
        )
        inline_runtime.runner.clock = lambda: NOW
        try:
            inline_results = {}
            for job in JOB_ORDER:
                d = inline_runtime.dispatcher.dispatch(job, trigger="cli", inline=True)
                assert (d.status, d.mode) == ("succeeded", "inline")
                inline_results[job] = inline_runtime.ledger.get(d.dispatch_key).result  # type: ignore[union-attr]
        finally:
            inline_runtime.close()

        assert queue_results == inline_results
        after_queue = queued.snapshot(ignore=PROVIDER_CLOCK_COLUMNS)
        after_inline = inline.snapshot(ignore=PROVIDER_CLOCK_COLUMNS)
        for table in after_queue:
            assert after_queue[table] == after_inline[table], table
        queued.engine.dispose()
        inline.engine.dispose()

    # The sample exercises every job: none of them had nothing to do.
    assert queue_results["availability"]["changed"] == 1
    assert queue_results["emailbison-availability-slot"]["pushed"] >= 4
    assert queue_results["followups"]["sent"] >= 2
    assert queue_results["response-timing"]["recorded"] == 2
    reconcile = queue_results["appointment-reconcile"]
    changes = {k: reconcile[k] for k in ("created", "cancelled", "rescheduled", "mismatches")}
    assert changes == {"created": 1, "cancelled": 1, "rescheduled": 1, "mismatches": 1}


def test_a_followup_send_cut_by_sigkill_before_its_commit_is_not_sent_twice(
    runtime: Runtime, workers: Workers, settings: Settings, tmp_path: Path
) -> None:
    store = open_store(settings.database_url)
    client = add_client(store)
    add_sequence(store, client, offsets=(2, 5))
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    [task] = store.rows("followup_tasks")
    key = f"followup-task:{task['id']}:step:1"
    marker = tmp_path / "kill-after-send"
    marker.touch()
    env = {"OFFLOAD_TEST_NOW": NOW.isoformat(), "OFFLOAD_TEST_KILL_AFTER_SEND": str(marker)}

    first = workers.start(processes=1, threads=1, **env)
    d = runtime.dispatcher.dispatch("test-followups", trigger="cli")
    wait_for(lambda: not marker.exists(), timeout_s=60, what="the provider to take the email")
    wait_for(lambda: first.poll() is not None, timeout_s=30, what="the killed worker group to exit")

    # The provider has the email; our database does not know: the task is pending, the run `running`.
    assert [r["idempotency_key"] for r in store.rows("sent_emails")] == [key]
    assert store.rows("followup_tasks")[0]["status"] == "pending"
    assert runtime.ledger.get(d.dispatch_key).status == "running"  # type: ignore[union-attr]

    # Let the dead attempt's leases run out, so the redelivered message takes the run over.
    wait_for(
        lambda: (
            runtime.leases.held("test-followups") == 0
            and runtime.ledger.get(d.dispatch_key).lease_expires_at < datetime.now(UTC)
        ),  # type: ignore[union-attr,operator]
        timeout_s=30,
        what="the dead attempt's leases to expire",
    )
    workers.start(processes=1, threads=1, **env)
    run = wait_for(lambda: final(runtime, d.dispatch_key), timeout_s=60, what="the redelivered run")

    assert run.status == "succeeded", workers.logs()
    assert "lost" in [e.status for e in runtime.ledger.events(d.dispatch_key)]
    assert [r["idempotency_key"] for r in store.rows("sent_emails")] == [key]
    tasks = store.rows("followup_tasks")
    assert [(t["step"], t["status"]) for t in tasks] == [(1, "sent"), (2, "pending")]
    assert tasks[0]["provider_message_id"] == local_message_id(key)
    outbound = [m for m in store.rows("messages") if m["provider_message_id"] == local_message_id(key)]
    assert len(outbound) == 1
    store.engine.dispose()
