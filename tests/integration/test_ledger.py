"""The ledger's claim, release and finish rules, on both backends: who may write what, and when."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import text

from domain.runs import RunStatus
from offload.wiring import Runtime
from store import db
from store import ledger as ledger_module
from store.errors import LeaseLost
from store.ledger import NewRun, SqlLedger, Worker

A, B = Worker("host-a", 1), Worker("host-b", 2)


def new_run(key: str = "k", *, mode: str = "queue") -> NewRun:
    return NewRun(
        job="test-record",
        dispatch_key=key,
        message_id=key,
        correlation_id="c",
        trigger="cli",
        mode=mode,
        slot=None,
        params={},
    )


def at(runtime: Runtime, when: datetime) -> SqlLedger:
    return SqlLedger(runtime.engine, clock=lambda: when)


def test_a_verdict_without_a_token_never_overwrites_a_running_or_finished_run(runtime: Runtime) -> None:
    ledger = runtime.ledger
    ledger.record_dispatch(new_run())
    claim = ledger.claim(new_run(), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert claim.token is not None
    assert ledger.finish("k", RunStatus.SKIPPED, token=None, detail="late copy") is None
    assert ledger.finish("k", RunStatus.DEAD, token="someone-else", detail="zombie") is None
    with runtime.uow() as uow:
        ledger.complete_in(
            uow.session, "k", claim.token, {"ok": 1}, job="test-record", started_at=ledger.now()
        )
        uow.commit()
    assert ledger.finish("k", RunStatus.DEAD, token=None, detail="late copy") is None
    assert ledger.get("k").status == RunStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_claim_that_finds_every_slot_held_writes_nothing(runtime: Runtime) -> None:
    ledger = runtime.ledger
    for key in ("a", "b"):
        ledger.record_dispatch(new_run(key))
    holder = ledger.claim(new_run("a"), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert holder.outcome == "claimed" and runtime.leases.held("test-record") == 1
    assert ledger.claim(new_run("b"), cap=1, lease_s=60, worker=B, max_attempts=3).outcome == "capped"
    waiting = ledger.get("b")
    assert waiting is not None and (waiting.status, waiting.attempt) == ("queued", 0)
    assert [e.status for e in ledger.events("b")] == ["queued"]
    run = ledger.defer("b", detail="cap full")
    assert run is not None and (run.status, run.attempt, run.deferrals) == ("deferred", 0, 1)
    assert run.lease_expires_at is None and run.finished_at is None
    assert holder.token is not None
    with runtime.uow() as uow:  # the holder's success frees the slot
        ledger.complete_in(uow.session, "a", holder.token, {}, job="test-record", started_at=ledger.now())
        uow.commit()
    again = ledger.claim(new_run("b"), cap=1, lease_s=60, worker=B, max_attempts=3)
    assert again.outcome == "claimed" and again.attempt == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_claim_looks_again_at_a_slot_whose_release_is_still_committing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_module, "_PG_RECHECK_S", 0.5)
    ledger = runtime.ledger
    for key in ("a", "b"):
        ledger.record_dispatch(new_run(key))
    assert ledger.claim(new_run("a"), cap=1, lease_s=60, worker=A, max_attempts=3).outcome == "claimed"
    with runtime.engine.connect() as conn:
        release = conn.begin()  # a release that commits late keeps the slot row locked until then
        conn.execute(text("UPDATE concurrency_leases SET holder = NULL WHERE job = 'test-record'"))
        committer = threading.Timer(0.2, release.commit)
        committer.start()
        try:
            claim = ledger.claim(new_run("b"), cap=1, lease_s=60, worker=B, max_attempts=3)
        finally:
            committer.join()
    assert claim.outcome == "claimed"


def test_a_live_holder_makes_a_second_copy_wait_and_a_dead_one_is_taken_over(runtime: Runtime) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    at(runtime, start).record_dispatch(new_run())
    first = at(runtime, start).claim(new_run(), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert (
        at(runtime, start + timedelta(seconds=30))
        .claim(new_run(), cap=1, lease_s=60, worker=B, max_attempts=3)
        .outcome
        == "busy"
    )
    taken = runtime.ledger.claim(new_run(), cap=1, lease_s=60, worker=B, max_attempts=3)
    assert taken.outcome == "claimed" and taken.token != first.token and taken.attempt == 2
    statuses = [(e.status, e.attempt, e.worker_host) for e in runtime.ledger.events("k")]
    assert statuses == [
        ("queued", 0, None),
        ("running", 1, "host-a"),
        ("lost", 1, "host-a"),
        ("running", 2, "host-b"),
    ]


def test_an_attempt_reaped_while_it_overran_its_lease_still_succeeds_unless_taken_over(
    runtime: Runtime,
) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    for key in ("slow", "taken"):
        at(runtime, long_ago).record_dispatch(new_run(key))
    slow = at(runtime, long_ago).claim(new_run("slow"), cap=2, lease_s=1, worker=A, max_attempts=3)
    taken = at(runtime, long_ago).claim(new_run("taken"), cap=2, lease_s=1, worker=A, max_attempts=3)
    assert runtime.ledger.reap() == 2
    assert slow.token is not None and taken.token is not None
    runtime.ledger.complete_in(None, "slow", slow.token, {"late": 1}, job="test-record", started_at=long_ago)
    run = runtime.ledger.get("slow")
    assert run is not None and (run.status, run.attempt, run.result) == ("succeeded", 1, {"late": 1})
    history = [(e.status, e.attempt) for e in runtime.ledger.events("slow")]
    assert history == [("queued", 0), ("running", 1), ("lost", 1), ("succeeded", 1)]
    runtime.ledger.claim(new_run("taken"), cap=2, lease_s=60, worker=B, max_attempts=3)  # a redelivery
    with pytest.raises(LeaseLost):
        runtime.ledger.complete_in(None, "taken", taken.token, {}, job="test-record", started_at=long_ago)
    assert runtime.leases.held("test-record") == 1  # the redelivery's slot only


@pytest.mark.parametrize("reaped_first", [False, True])
def test_a_run_that_keeps_killing_its_worker_ends_dead(runtime: Runtime, reaped_first: bool) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    at(runtime, long_ago).record_dispatch(new_run())
    at(runtime, long_ago).claim(new_run(), cap=1, lease_s=1, worker=A, max_attempts=1)
    if reaped_first:
        assert runtime.ledger.reap() == 1
    claim = runtime.ledger.claim(new_run(), cap=1, lease_s=60, worker=B, max_attempts=1)
    assert claim.outcome == "exhausted" and claim.run is not None and claim.run.status == RunStatus.DEAD


def test_an_inline_run_lost_with_its_process_runs_again_on_the_next_trigger(runtime: Runtime) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    at(runtime, long_ago).record_dispatch(new_run(mode="inline"))
    at(runtime, long_ago).claim(new_run(mode="inline"), cap=1, lease_s=1, worker=A, max_attempts=1 << 30)
    runtime.ledger.reap()
    run, duplicate = runtime.ledger.record_dispatch(new_run(mode="inline"))
    assert not duplicate and run.status == RunStatus.QUEUED
    queued_lost = new_run("q")
    at(runtime, long_ago).record_dispatch(queued_lost)
    at(runtime, long_ago).claim(queued_lost, cap=1, lease_s=1, worker=A, max_attempts=3)
    runtime.ledger.reap()
    assert runtime.ledger.record_dispatch(queued_lost)[1], "a queue run's message is redelivered instead"


def _retried_then_succeeded(runtime: Runtime) -> list[datetime]:
    """Run "k" through queued, running (host-a), retrying, running (host-b), succeeded; their times."""
    t = [datetime.now(UTC) - timedelta(minutes=10) + timedelta(seconds=i) for i in range(5)]
    at(runtime, t[0]).record_dispatch(new_run())
    first = at(runtime, t[1]).claim(new_run(), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert first.token is not None
    at(runtime, t[2]).finish("k", RunStatus.RETRYING, token=first.token, error=RuntimeError("boom"))
    second = at(runtime, t[3]).claim(new_run(), cap=1, lease_s=60, worker=B, max_attempts=3)
    assert second.token is not None
    at(runtime, t[4]).complete_in(None, "k", second.token, {}, job="test-record", started_at=t[4])
    return t


def test_the_history_has_every_transition_though_the_hot_path_writes_only_the_run_row(
    runtime: Runtime,
) -> None:
    t = _retried_then_succeeded(runtime)

    history = [(e.status, e.attempt, e.worker_host, e.at) for e in runtime.ledger.events("k")]
    assert history == [
        ("queued", 0, None, t[0]),
        ("running", 1, "host-a", t[1]),
        ("retrying", 1, "host-a", t[2]),
        ("running", 2, "host-b", t[3]),
        ("succeeded", 2, "host-b", t[4]),
    ]
    # The current attempt's claim and success are the run row's own: no history row for them.
    with runtime.engine.connect() as conn:
        written = conn.execute(
            text(
                "SELECT e.status, e.attempt FROM background_function_run_events e"
                " JOIN background_function_runs r ON r.id = e.run_id"
                " WHERE r.dispatch_key = 'k' ORDER BY e.id"
            )
        ).all()
    assert [tuple(row) for row in written] == [("queued", 0), ("running", 1), ("retrying", 1)]


def _history_rows(runtime: Runtime, key: str) -> list[tuple[str, int, str | None]]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.status, e.attempt, e.worker_host FROM background_function_run_events e"
                " JOIN background_function_runs r ON r.id = e.run_id"
                " WHERE r.dispatch_key = :k ORDER BY e.id"
            ),
            {"k": key},
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_undoing_the_claimed_at_migration_writes_what_only_the_run_row_held_as_history_rows(
    runtime: Runtime,
) -> None:
    t = _retried_then_succeeded(runtime)
    at(runtime, t[0]).record_dispatch(new_run("running"))
    running = at(runtime, t[1]).claim(new_run("running"), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert running.token is not None
    before = {key: list(runtime.ledger.events(key)) for key in ("k", "running")}

    command.downgrade(db.alembic_config(runtime.engine), "0003")
    try:
        assert _history_rows(runtime, "k") == [
            ("queued", 0, None),
            ("running", 1, "host-a"),
            ("retrying", 1, "host-a"),
            ("running", 2, "host-b"),
            ("succeeded", 2, "host-b"),
        ]
        assert _history_rows(runtime, "running") == [("queued", 0, None), ("running", 1, "host-a")]
    finally:
        db.upgrade(runtime.engine)
    assert {key: list(runtime.ledger.events(key)) for key in before} == before


def test_a_later_attempt_that_did_not_set_claimed_at_gets_no_second_running_row(runtime: Runtime) -> None:
    """During an upgrade past 0004 a process of the code before may claim the next attempt."""
    t = [datetime.now(UTC) - timedelta(minutes=10) + timedelta(seconds=i) for i in range(4)]
    at(runtime, t[0]).record_dispatch(new_run())
    first = at(runtime, t[1]).claim(new_run(), cap=1, lease_s=60, worker=A, max_attempts=3)
    assert first.token is not None
    at(runtime, t[2]).finish("k", RunStatus.RETRYING, token=first.token, error=RuntimeError("boom"))
    with runtime.engine.begin() as conn:  # the code before claims attempt 2 and writes its own row
        conn.execute(
            text(
                "UPDATE background_function_runs SET status = 'running', attempt = 2,"
                " lease_token = 'old', lease_expires_at = :until, worker_host = 'host-b'"
                " WHERE dispatch_key = 'k'"
            ),
            {"until": t[3] + timedelta(minutes=1)},
        )
        conn.execute(
            text(
                "INSERT INTO background_function_run_events (run_id, at, status, attempt, worker_host)"
                " SELECT id, :at, 'running', 2, 'host-b' FROM background_function_runs"
                " WHERE dispatch_key = 'k'"
            ),
            {"at": t[3]},
        )
    at(runtime, t[3]).finish("k", RunStatus.RETRYING, token="old", error=RuntimeError("again"))

    assert [(e.status, e.attempt) for e in runtime.ledger.events("k")] == [
        ("queued", 0),
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("retrying", 2),
    ]
