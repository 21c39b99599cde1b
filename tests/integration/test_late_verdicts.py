"""A verdict about a message that holds nothing (its claim found the cap full) is written after the
fact, by StatusLedger. It must not overwrite what happened to the run meanwhile: an attempt another
copy of the message ran, or a `lost` run whose overrunning attempt may still finish it while the
copy waits to take it over.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage
from sqlalchemy import Engine

from domain.runs import RunStatus
from offload.wiring import Runtime
from store import db
from store.ledger import NewRun, SqlLedger, Worker
from tests.support.guards import Clock, Guards

A, B = Worker("host-a", 1), Worker("host-b", 2)


def _run(key: str, job: str = "test-capped") -> NewRun:
    return NewRun(job, key, key, "c", "cli", "queue", None, {})


@pytest.fixture
def ledger(database_url: str) -> Iterator[SqlLedger]:
    engine = db.make_engine(database_url)
    yield SqlLedger(engine)
    engine.dispose()


def test_a_late_deferral_leaves_the_attempt_another_copy_ran_since(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = runtime.actors["test-crashable"]  # cap 1
    g = Guards(runtime, Clock(), monkeypatch)
    key, blocker = "test-crashable:k", "test-crashable:blocker"
    for k in (key, blocker):
        g.ledger.record_dispatch(_run(k, "test-crashable"))
    held = g.ledger.claim(_run(blocker, "test-crashable"), cap=1, lease_s=600, worker=B, max_attempts=4)
    assert held.token is not None
    late = MessageProxy(actor.message(key, {}).copy(message_id="m-1"))
    with pytest.raises(SkipMessage):  # the cap is full: deferred, its verdict not yet written
        for m in g.front:
            m.before_process_message(g.broker, late)
    g.ledger.leases.release("test-crashable", key=blocker, token=held.token)

    def boom(_: object) -> None:
        raise RuntimeError("boom")

    g.deliver(actor.message(key, {}).copy(message_id="m-1"), body=boom)  # another copy: attempt 1 fails
    assert g.ledger.get(key).status == "retrying"  # type: ignore[union-attr]
    for m in reversed(g.front):
        m.after_skip_message(g.broker, late)
    run = g.ledger.get(key)
    assert run is not None and (run.status, run.attempt) == ("retrying", 1)


@pytest.mark.parametrize(
    ("verdict", "detail"),
    [(RunStatus.SKIPPED, "concurrency cap 1 reached"), (RunStatus.DEAD, "waited more than 60000 ms")],
)
def test_a_late_final_verdict_does_not_end_a_run_whose_retry_is_owed(
    ledger: SqlLedger, verdict: RunStatus, detail: str
) -> None:
    for key in ("x", "k"):
        ledger.record_dispatch(_run(key))
    other = ledger.claim(_run("x"), cap=1, lease_s=60, worker=A, max_attempts=4)
    assert other.token is not None
    capped = ledger.claim(_run("k"), cap=1, lease_s=60, worker=B, max_attempts=4)
    assert (capped.outcome, capped.attempt) == ("capped", 0)
    # Meanwhile x succeeds, another copy of k claims the run and its attempt fails: a retry is owed.
    ledger.complete_in(None, "x", other.token, {}, job="test-capped", started_at=ledger.now())
    second = ledger.claim(_run("k"), cap=1, lease_s=60, worker=A, max_attempts=4)
    assert second.token is not None
    ledger.finish("k", RunStatus.RETRYING, token=second.token, error=RuntimeError("boom"))
    ledger.leases.release("test-capped", key="k", token=second.token)
    ledger.finish("k", verdict, token=None, attempt=capped.attempt, detail=detail)  # the late verdict
    assert ledger.claim(_run("k"), cap=1, lease_s=60, worker=A, max_attempts=4).outcome == "claimed"


def _overran_and_reaped(database_url: str) -> tuple[Engine, SqlLedger, str]:
    """Run `a` overran its 1 s lease (its attempt may still run, or its worker died); run `b` took
    the only slot and the reaper marked `a` lost. The engine, a ledger, and `a`'s attempt's token."""
    engine = db.make_engine(database_url)
    past = datetime.now(UTC) - timedelta(minutes=5)
    old, now = SqlLedger(engine, clock=lambda: past), SqlLedger(engine)
    for key in ("a", "b"):
        old.record_dispatch(_run(key))
    overran = old.claim(_run("a"), cap=1, lease_s=1, worker=A, max_attempts=10)
    assert overran.token is not None
    assert now.claim(_run("b"), cap=1, lease_s=600, worker=B, max_attempts=10).outcome == "claimed"
    assert now.reap() == 1
    return engine, now, overran.token


def test_a_dead_letter_of_a_copy_that_found_the_run_held_leaves_a_lost_run_to_its_message(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy could not be deferred (the broker refused it) and was dead-lettered; meanwhile the
    holder died and the run was reaped. The holder's redelivered message takes the run over: the
    copy's `dead` ended it, and that message found a duplicate."""
    clock = Clock()
    g = Guards(runtime, clock, monkeypatch)
    key = "test-crashable:k"
    new = _run(key, "test-crashable")
    g.ledger.record_dispatch(new)
    assert g.ledger.claim(new, cap=1, lease_s=60, worker=A, max_attempts=10).token is not None

    def refuse(message: object, *, delay: int | None = None) -> object:
        raise ConnectionError("broker gone")

    monkeypatch.setattr(g.broker, "enqueue", refuse)
    copy = MessageProxy(runtime.actors["test-crashable"].message(key, {}).copy(message_id=key))
    with pytest.raises(SkipMessage):
        for m in g.front:
            m.before_process_message(g.broker, copy)
    assert copy.failed
    clock.advance(120)
    assert g.ledger.reap() == 1
    for m in reversed(g.front):
        m.after_skip_message(g.broker, copy)
    assert g.ledger.get(key).status == "lost"  # type: ignore[union-attr]
    assert g.ledger.claim(new, cap=1, lease_s=60, worker=B, max_attempts=10).outcome == "claimed"


def test_a_deferral_of_another_copy_of_a_lost_runs_message_leaves_its_attempt_to_finish(
    database_url: str,
) -> None:
    """A copy that found the cap full took nothing over, and waits to."""
    engine, ledger, token = _overran_and_reaped(database_url)
    try:
        copy = ledger.claim(_run("a"), cap=1, lease_s=600, worker=B, max_attempts=10)
        assert copy.outcome == "capped"
        ledger.defer("a", detail="concurrency cap 1 reached", attempt=copy.attempt)
        assert ledger.get("a").status == "lost"  # type: ignore[union-attr]
        ledger.complete_in(None, "a", token, {"ok": 1}, job="test-capped", started_at=ledger.now())
        assert ledger.get("a").status == "succeeded"  # type: ignore[union-attr]
    finally:
        engine.dispose()


@pytest.mark.parametrize("verdict", [RunStatus.SKIPPED, RunStatus.DEAD])
def test_a_final_verdict_on_the_last_copy_of_a_lost_runs_message_ends_the_run(
    database_url: str, verdict: RunStatus
) -> None:
    """The copy was skipped or dead-lettered: no message is left to take the run over, and a run
    left `lost` would stay so (replay and requeue-stale leave lost runs to their message)."""
    engine, ledger, _ = _overran_and_reaped(database_url)
    try:
        copy = ledger.claim(_run("a"), cap=1, lease_s=600, worker=B, max_attempts=10)
        ledger.finish("a", verdict, token=None, attempt=copy.attempt, detail="concurrency cap 1 reached")
        assert ledger.get("a").status == verdict  # type: ignore[union-attr]
    finally:
        engine.dispose()
