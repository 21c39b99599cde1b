"""A verdict about a message that holds nothing (its claim found the cap full) is written after the
fact, by StatusLedger. It must not overwrite what happened to the run meanwhile: an attempt another
copy of the message ran, or a `lost` run whose overrunning attempt may still finish it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

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


@pytest.mark.parametrize("verdict", ["deferred", "skipped", "dead"])
def test_a_verdict_about_another_copy_of_a_lost_runs_message_leaves_its_attempt_to_finish(
    database_url: str, verdict: str
) -> None:
    """The reaper marked run `a` lost, but its attempt still runs (it overran its lease) and may
    still succeed, as long as no copy of the message took the run over. A copy that found the cap
    full took nothing over."""
    engine = db.make_engine(database_url)
    past = datetime.now(UTC) - timedelta(minutes=5)
    old, now = SqlLedger(engine, clock=lambda: past), SqlLedger(engine)
    try:
        for key in ("a", "b"):
            old.record_dispatch(_run(key))
        overrunning = old.claim(_run("a"), cap=1, lease_s=1, worker=A, max_attempts=10)
        assert overrunning.token is not None
        assert now.claim(_run("b"), cap=1, lease_s=600, worker=B, max_attempts=10).outcome == "claimed"
        assert now.reap() == 1
        copy = now.claim(_run("a"), cap=1, lease_s=600, worker=B, max_attempts=10)
        assert copy.outcome == "capped"
        if verdict == "deferred":
            now.defer("a", detail="concurrency cap 1 reached", attempt=copy.attempt)
        else:
            now.finish("a", RunStatus(verdict), token=None, attempt=copy.attempt, detail="cap reached")
        now.complete_in(None, "a", overrunning.token, {"ok": 1}, job="test-capped", started_at=now.now())
        assert now.get("a").status == "succeeded"  # type: ignore[union-attr]
    finally:
        engine.dispose()
