"""Housekeeping jobs: the reaper of expired leases and ledger retention, bounded per run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from domain.runs import RunStatus
from offload.wiring import Runtime
from store.ledger import NewRun, SqlLedger, Worker
from store.models import Run, RunEvent
from tests.services import Rabbit
from tests.support.procs import Workers, wait_for


def new_run(key: str, *, replay_of: int | None = None) -> NewRun:
    return NewRun(
        job="test-record",
        dispatch_key=key,
        message_id=key,
        correlation_id=key,
        trigger="cli",
        mode="queue",
        slot=None,
        params={},
        replay_of=replay_of,
    )


def at(runtime: Runtime, when: datetime) -> SqlLedger:
    """The runtime's ledger as seen at `when`."""
    return SqlLedger(runtime.engine, clock=lambda: when)


def count(runtime: Runtime, model: type[Run] | type[RunEvent]) -> int:
    with runtime.uow() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(model)) or 0)


def test_reaper_job_marks_runs_whose_lease_expired_lost(runtime: Runtime) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    old = at(runtime, long_ago)
    old.record_dispatch(new_run("dead-holder"))
    old.claim(new_run("dead-holder"), cap=2, lease_s=60, worker=Worker("gone", 1), max_attempts=5)
    runtime.ledger.record_dispatch(new_run("live-holder"))
    runtime.ledger.claim(new_run("live-holder"), cap=2, lease_s=600, worker=Worker("here", 2), max_attempts=5)

    d = runtime.dispatcher.dispatch("reap-leases", trigger="cli", inline=True)

    assert d.result == {"reaped": 1, "has_more": False}
    assert d.status == RunStatus.SUCCEEDED
    assert runtime.ledger.get("dead-holder").status == RunStatus.LOST  # type: ignore[union-attr]
    assert runtime.ledger.get("live-holder").status == RunStatus.RUNNING  # type: ignore[union-attr]


def test_a_reaped_inline_run_is_failed_so_a_replay_or_its_next_trigger_runs_it_again(
    runtime: Runtime,
) -> None:
    """No message comes back for an inline run whose process died: marked `lost`, nothing would
    ever run it again (replay refuses `lost` runs, requeue-stale looks at `queued` ones, and the
    scheduler counts the slot as handled)."""
    inline = replace(new_run("inline-gone"), mode="inline")
    old = at(runtime, datetime.now(UTC) - timedelta(hours=1))
    old.record_dispatch(inline)
    old.claim(inline, cap=2, lease_s=60, worker=Worker("gone", 1), max_attempts=1 << 30)

    assert runtime.ledger.reap() == 1

    run = runtime.ledger.get("inline-gone")
    assert run is not None and (run.status, run.error_type) == (RunStatus.FAILED, "LeaseExpired")
    assert [e.status for e in runtime.ledger.events("inline-gone")] == ["queued", "running", "failed"]
    replay = runtime.dispatcher.replay("inline-gone")
    assert (replay.duplicate, replay.status) == (False, RunStatus.QUEUED)


def test_retention_deletes_old_ended_runs_and_events_a_batch_at_a_time(runtime: Runtime) -> None:
    old = at(runtime, datetime.now(UTC) - timedelta(days=45))
    for i in range(5):
        old.record_dispatch(new_run(f"old-{i}"))
        old.finish(f"old-{i}", RunStatus.FAILED, token=None, detail="boom")
    old.record_dispatch(new_run("old-still-queued"))
    replayed = old.get("old-0")
    assert replayed is not None
    runtime.ledger.record_dispatch(new_run("replay-of-old-0", replay_of=replayed.id))
    runtime.ledger.record_dispatch(new_run("recent"))
    runtime.ledger.finish("recent", RunStatus.FAILED, token=None, detail="boom")

    first = runtime.dispatcher.dispatch(
        "ledger-retention", trigger="cli", inline=True, params={"batch_size": 3}
    )
    assert first.result is not None and first.result["runs"] == 3 and first.result["has_more"] is True
    second = runtime.dispatcher.dispatch(
        "ledger-retention", trigger="cli", inline=True, params={"batch_size": 3, "again": 1}
    )
    assert second.result is not None and second.result["runs"] == 1

    left = {r.dispatch_key for r in runtime.ledger.runs(limit=100)}
    # Kept: a run still queued, a run a replay points at, recent runs and the retention runs themselves.
    assert {"old-still-queued", "old-0", "replay-of-old-0", "recent"} <= left
    assert not {f"old-{i}" for i in range(1, 5)} & left
    with runtime.uow() as uow:
        orphans = uow.session.scalar(
            select(func.count()).select_from(RunEvent).where(RunEvent.run_id.not_in(select(Run.id)))
        )
    assert orphans == 0


def test_retention_keeps_the_history_of_a_run_that_has_not_ended(runtime: Runtime) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=45)
    old = at(runtime, long_ago)
    old.record_dispatch(new_run("still-in-play"))
    old.claim(new_run("still-in-play"), cap=8, lease_s=60, worker=Worker("gone", 1), max_attempts=5)
    assert at(runtime, long_ago + timedelta(minutes=5)).reap() == 1

    runtime.dispatcher.dispatch("ledger-retention", trigger="cli", inline=True)

    assert runtime.ledger.get("still-in-play").status == RunStatus.LOST  # type: ignore[union-attr]
    assert [e.status for e in runtime.ledger.events("still-in-play")] == ["queued", "running", "lost"]


def test_requeue_job_publishes_again_a_run_no_message_carries(runtime: Runtime, workers: Workers) -> None:
    # A dispatcher that died between recording the run and publishing it, a quarter of an hour ago.
    at(runtime, datetime.now(UTC) - timedelta(minutes=15)).record_dispatch(new_run("orphan"))
    runtime.ledger.record_dispatch(new_run("fresh"))  # queued just now: its message may be on the way

    d = runtime.dispatcher.dispatch("requeue-stale", trigger="cli", inline=True)

    assert d.result == {"requeued": 1, "has_more": False}
    workers.start(threads=2)
    wait_for(lambda: runtime.ledger.get("orphan").status == RunStatus.SUCCEEDED, what="the orphan to run")  # type: ignore[union-attr]
    assert [e.status for e in runtime.ledger.events("orphan")] == ["queued", "queued", "running", "succeeded"]
    assert runtime.ledger.get("fresh").status == RunStatus.QUEUED  # type: ignore[union-attr]


def test_requeue_is_not_held_up_by_runs_of_a_job_no_longer_registered(runtime: Runtime) -> None:
    """Such runs were skipped but still filled the batch, oldest first: a stale run of a known job
    behind a batch of them was never published again."""
    now = datetime.now(UTC)
    at(runtime, now - timedelta(minutes=30)).record_dispatch(replace(new_run("retired:1"), job="retired-job"))
    at(runtime, now - timedelta(minutes=20)).record_dispatch(new_run("orphan"))

    d = runtime.dispatcher.dispatch("requeue-stale", trigger="cli", inline=True, params={"batch_size": 1})

    assert d.result is not None and d.result["requeued"] == 1
    assert [e.status for e in runtime.ledger.events("orphan")] == ["queued", "queued"]


def test_requeue_leaves_alone_a_job_whose_queue_holds_messages(runtime: Runtime, rabbit: Rabbit) -> None:
    """A message published again waits in the queue while nothing consumes it (a backlog, workers
    down). Its run stays `queued`, so ten minutes on it was published once more: one more copy of
    every such run every ten minutes."""
    at(runtime, datetime.now(UTC) - timedelta(minutes=15)).record_dispatch(new_run("orphan"))
    assert (
        runtime.dispatcher.requeue_stale(queued_before=datetime.now(UTC) - timedelta(minutes=10), limit=10)
        == 1
    )
    queue = runtime.registry["test-record"].queue
    assert rabbit.message_count(queue) == 1

    assert (
        runtime.dispatcher.requeue_stale(queued_before=datetime.now(UTC) + timedelta(seconds=1), limit=10)
        == 0
    )
    assert rabbit.message_count(queue) == 1


def test_requeue_does_not_depend_on_the_threads_publishing_connection(runtime: Runtime) -> None:
    """RabbitMQ closes a thread's publishing connection that sat idle past two heartbeats. Asked on
    that connection, the queue depths failed in that thread for good: nothing was requeued again."""
    at(runtime, datetime.now(UTC) - timedelta(minutes=15)).record_dispatch(new_run("orphan"))
    runtime.broker.connection.close()  # as RabbitMQ leaves it

    assert (
        runtime.dispatcher.requeue_stale(queued_before=datetime.now(UTC) - timedelta(minutes=10), limit=10)
        == 1
    )


def test_requeue_publishes_again_deferred_and_retrying_runs_whose_message_is_gone(runtime: Runtime) -> None:
    """A purged delay queue left such runs waiting for good: requeue-stale looked at `queued` runs
    only, and the sweeper leaves an event alone while its drain is deferred or retrying."""
    now = datetime.now(UTC)
    a_while_ago = at(runtime, now - timedelta(minutes=15))
    a_while_ago.record_dispatch(new_run("deferred"))
    assert a_while_ago.defer("deferred", detail="concurrency cap 8 reached") is not None
    # A retry waits out its backoff in the delay queue: up to 2 minutes for these jobs.
    for key, ago in (
        ("retrying-recently", timedelta(minutes=11)),
        ("retrying-long-ago", timedelta(minutes=13)),
    ):
        then = at(runtime, now - ago)
        then.record_dispatch(new_run(key))
        claim = then.claim(new_run(key), cap=8, lease_s=60, worker=Worker("w", 1), max_attempts=5)
        assert claim.token is not None
        then.finish(key, RunStatus.RETRYING, token=claim.token, detail="boom")

    assert runtime.dispatcher.requeue_stale(queued_before=now - timedelta(minutes=10), limit=10) == 2
    for key in ("deferred", "retrying-long-ago"):
        assert runtime.ledger.events(key)[-1].detail == "message published again: none was seen for a while"
    assert runtime.ledger.events("retrying-recently")[-1].status == RunStatus.RETRYING


def _message_in_delay_queue(runtime: Runtime, job: str, key: str, **options: Any) -> None:
    """The run's message re-enqueued with a delay, as a deferral or a retry is: it waits in `.DQ`."""
    run = runtime.ledger.get(key)
    assert run is not None
    actor = runtime.dispatcher.actors[job]
    message = actor.message_with_options(args=(run.dispatch_key, run.params), **options)
    actor.broker.enqueue(message.copy(message_id=run.message_id), delay=1_000)


def test_requeue_leaves_alone_runs_whose_deferral_or_retry_waits_in_the_delay_queue(
    runtime: Runtime, rabbit: Rabbit
) -> None:
    """Workers down for a quarter of an hour: the deferred run's message and the retry wait, ready,
    in `<queue>.DQ`; a copy of each was published beside them."""
    now = datetime.now(UTC)
    then = at(runtime, now - timedelta(minutes=15))
    then.record_dispatch(replace(new_run("deferred"), job="test-capped"))
    assert then.defer("deferred", detail="concurrency cap 2 reached") is not None
    _message_in_delay_queue(runtime, "test-capped", "deferred")
    long_ago = at(runtime, now - timedelta(hours=2))
    retrying = replace(new_run("retrying"), job="test-explode")
    long_ago.record_dispatch(retrying)
    claim = long_ago.claim(retrying, cap=4, lease_s=60, worker=Worker("w", 1), max_attempts=3)
    assert claim.token is not None
    long_ago.finish("retrying", RunStatus.RETRYING, token=claim.token, detail="boom")
    _message_in_delay_queue(runtime, "test-explode", "retrying", retries=1)

    assert runtime.dispatcher.requeue_stale(queued_before=now - timedelta(minutes=10), limit=10) == 0
    for job in ("test-capped", "test-explode"):
        assert rabbit.message_count(runtime.registry[job].queue) == 0


def test_a_retrying_run_published_again_gets_only_the_retries_it_has_left(
    runtime: Runtime, workers: Workers
) -> None:
    """test-explode allows 2 retries, 3 attempts. Published again with dramatiq's retry count at 0,
    a run that had failed once ran 3 more times."""
    retrying = replace(new_run("lost-retry"), job="test-explode")
    long_ago = at(runtime, datetime.now(UTC) - timedelta(hours=2))
    long_ago.record_dispatch(retrying)
    claim = long_ago.claim(retrying, cap=4, lease_s=60, worker=Worker("w", 1), max_attempts=3)
    assert claim.token is not None
    long_ago.finish("lost-retry", RunStatus.RETRYING, token=claim.token, detail="boom")

    assert (
        runtime.dispatcher.requeue_stale(queued_before=datetime.now(UTC) - timedelta(minutes=10), limit=10)
        == 1
    )
    workers.start(threads=2)
    wait_for(lambda: runtime.ledger.get("lost-retry").status == RunStatus.DEAD, what="the run to end dead")  # type: ignore[union-attr]
    assert runtime.ledger.get("lost-retry").attempt == 3  # type: ignore[union-attr]
