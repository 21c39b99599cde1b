"""The drain and the sweeper (domain jobs) run inline through the runner, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from sqlalchemy import update

from actors.drain_queue import DispatchDrainQueue
from domain import webhook_drain
from domain.errors import TransientError
from domain.ports import Ports, Redrive
from domain.runs import RunStatus
from domain.webhook_drain import DRAIN_MAX_ATTEMPTS, drain_key
from domain.webhooks import CORRELATION_HEADER, KNOWN_TYPES
from offload.settings import Settings
from offload.wiring import Runtime, build
from store.ledger import SqlLedger
from store.models import Run
from store.webhook_events import NewWebhookEvent
from tests.ingress.conftest import effects_of, stored_events
from tests.services import Rabbit
from tests.support.jobs import TEST_REGISTRY
from tests.support.procs import wait_for
from tests.support.webhooks import RECORDING_PORTS, encode, payload


def store(
    runtime: Runtime,
    event_id: str,
    *,
    type: str = "EMAIL_SENT",
    email: str = "lead@example.com",
    age_s: float = 0,
    queued_age_s: float | None = 0,
    status: str = "pending",
    headers: dict[str, str] | None = None,
) -> int:
    now = datetime.now(UTC)  # ages are relative to the moment of storing, as the sweeper sees them
    received = now - timedelta(seconds=age_s)
    new = NewWebhookEvent(
        provider="email",
        provider_event_id=event_id,
        event_type=type,
        lead_ref=email.lower(),
        headers=headers or {},
        body=encode(payload(event_id, type=type, email=email)).decode(),
        status=status,
        status_reason=None,
        received_at=received,
        queued_at=None if queued_age_s is None else now - timedelta(seconds=queued_age_s),
    )
    with runtime.uow() as uow:
        row_id, duplicate = uow.webhook_events.add(new)
        uow.commit()
    assert not duplicate
    return row_id


def drain(runtime: Runtime, row_id: int, *, via: str | None = None) -> dict[str, object]:
    """Drain `row_id` inline; `via` names another message of the same event (its own dispatch key)."""
    d = runtime.dispatcher.dispatch(
        "webhook-drain",
        trigger="cli",
        params={"event_id": row_id},
        key=drain_key(row_id) + (f":{via}" if via else ""),
        inline=True,
    )
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None
    return {"status": run.status, "result": run.result, "error": run.error_message}


def event(runtime: Runtime, row_id: int):  # type: ignore[no-untyped-def]
    return next(e for e in stored_events(runtime) if e.id == row_id)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build(settings, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    yield rt
    rt.close()


def test_a_drained_event_is_processed_once(runtime: Runtime) -> None:
    row = store(runtime, "evt-1")
    outcome = drain(runtime, row)
    assert outcome["status"] == "succeeded"
    assert outcome["result"] == {
        "event_id": row,
        "event_type": "EMAIL_SENT",
        "status": "processed",
        "attempt": 1,
    }
    stored = event(runtime, row)
    assert (stored.status, stored.attempts, stored.status_reason) == ("processed", 1, None)
    assert stored.processed_at is not None
    again = drain(runtime, row, via="second-message")
    assert again["result"] == {
        "event_id": row,
        "event_type": "EMAIL_SENT",
        "status": "processed",
        "already": True,
    }
    assert effects_of(runtime, "evt-1") == 1


def test_an_event_waits_while_an_older_event_of_its_lead_is_open(runtime: Runtime) -> None:
    older = store(runtime, "evt-old", email="a@example.com")
    newer = store(runtime, "evt-new", email="A@example.com", type="LEAD_REPLIED")
    other_lead = store(runtime, "evt-other", email="b@example.com")
    blocked = drain(runtime, newer)
    assert blocked["status"] == "failed"  # inline: no retry; in a worker this is a retry with backoff
    assert f"waiting for older event {older}" in str(blocked["error"])
    assert event(runtime, newer).status == "pending"
    assert event(runtime, newer).status_reason == f"waiting for older event {older} of the same lead"
    assert effects_of(runtime, "evt-new") == 0
    assert drain(runtime, other_lead)["status"] == "succeeded"
    assert drain(runtime, older)["status"] == "succeeded"
    assert drain(runtime, newer, via="retry")["status"] == "succeeded"
    assert event(runtime, newer).status == "processed"
    assert event(runtime, older).processed_at < event(runtime, newer).processed_at  # type: ignore[operator]


def test_an_older_event_that_failed_for_good_does_not_block_its_lead(runtime: Runtime) -> None:
    store(runtime, "evt-old", email="a@example.com", status="failed")
    store(runtime, "evt-ignored", email="a@example.com", status="ignored")
    newer = store(runtime, "evt-new", email="a@example.com")
    assert drain(runtime, newer)["status"] == "succeeded"
    assert event(runtime, newer).status == "processed"


def test_a_known_type_without_a_handler_stays_pending_with_a_reason(settings: Settings) -> None:
    runtime = build(settings, registry=TEST_REGISTRY, ports=Ports())
    try:
        row = store(runtime, "evt-1", type="EMAIL_BOUNCED")
        outcome = drain(runtime, row)
        assert outcome["status"] == "succeeded"
        stored = event(runtime, row)
        assert stored.status == "pending" and stored.processed_at is None
        assert "no handler for EMAIL_BOUNCED" in (stored.status_reason or "")
    finally:
        runtime.close()


def test_a_permanent_handler_error_marks_the_event_failed_at_once(runtime: Runtime) -> None:
    row = store(runtime, "evt-1", email="permanent@example.com")
    outcome = drain(runtime, row)
    assert outcome["status"] == "succeeded"
    assert outcome["result"]["status"] == "failed"  # type: ignore[index]
    stored = event(runtime, row)
    assert stored.status == "failed" and stored.attempts == 1
    assert "PermanentError: cannot apply evt-1" in (stored.status_reason or "")
    assert effects_of(runtime, "evt-1") == 0


def test_a_transient_handler_error_is_retried_then_marked_failed(runtime: Runtime) -> None:
    row = store(runtime, "evt-1", email="transient@example.com")
    for attempt in range(1, DRAIN_MAX_ATTEMPTS):
        outcome = drain(runtime, row, via=f"try-{attempt}")
        assert outcome["status"] == "failed" and "provider timeout" in str(outcome["error"])
        stored = event(runtime, row)
        assert (stored.status, stored.attempts) == ("retrying", attempt)
        assert stored.status_reason.startswith(f"attempt {attempt}: TransientError")  # type: ignore[union-attr]
    last = drain(runtime, row, via="last")
    assert last["status"] == "succeeded" and last["result"]["status"] == "failed"  # type: ignore[index]
    assert (event(runtime, row).status, event(runtime, row).attempts) == ("failed", DRAIN_MAX_ATTEMPTS)


def test_a_failed_attempt_leaves_alone_an_event_another_drain_finished_meanwhile(settings: Settings) -> None:
    def fails_while_another_drain_finishes(uow: Any, payload: object, now: datetime) -> None:
        rolled_back = uow.rollback

        def rollback() -> None:  # once the row is let go, a second drain of the event processes it
            rolled_back()
            with runtime.uow() as other:
                other.webhook_events.mark(row, status="processed", reason=None, attempts=1, finished=True)
                other.commit()

        uow.rollback = rollback
        raise TransientError("provider timeout")

    handlers = dict.fromkeys(KNOWN_TYPES, fails_while_another_drain_finishes)
    runtime = build(
        settings, registry=TEST_REGISTRY, ports=replace(RECORDING_PORTS, webhook_handlers=handlers)
    )
    try:
        row = store(runtime, "evt-1")
        outcome = drain(runtime, row)
        assert outcome["status"] == "succeeded" and outcome["result"]["already"] is True  # type: ignore[index]
        assert (event(runtime, row).status, event(runtime, row).attempts) == ("processed", 1)
    finally:
        runtime.close()


def test_a_stored_event_of_an_unknown_type_is_ignored_by_the_drain(runtime: Runtime) -> None:
    row = store(runtime, "evt-1", type="EMAIL_OPENED")
    assert drain(runtime, row)["status"] == "succeeded"
    assert event(runtime, row).status == "ignored"


def test_a_drain_without_an_event_id_fails_permanently(runtime: Runtime) -> None:
    d = runtime.dispatcher.dispatch("webhook-drain", trigger="cli", inline=True)
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and run.status == "failed" and run.error_type == "PermanentError"


class Recorder:
    """A DrainQueue that records the events it was asked to re-drive, or refuses after `fail_after`."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.events: list[int] = []
        self.fail_after = fail_after

    def redrive(self, event_id: int, *, correlation_id: str | None) -> Redrive:
        if self.fail_after is not None and len(self.events) >= self.fail_after:
            return "failed"
        self.events.append(event_id)
        return "queued"


def sweep(runtime: Runtime, **params: object) -> dict[str, object]:
    d = runtime.dispatcher.dispatch("webhook-sweeper", trigger="cli", params=params, inline=True)
    run = runtime.ledger.get(d.dispatch_key)
    assert run is not None and run.status == "succeeded", run
    assert run.result is not None
    return run.result


def test_the_sweeper_requeues_open_events_no_message_carries(settings: Settings) -> None:
    recorder = Recorder()
    runtime = build(settings, registry=TEST_REGISTRY, ports=replace(RECORDING_PORTS, drain_queue=recorder))
    try:
        never_queued = store(runtime, "e1", age_s=120, queued_age_s=None)
        lost_message = store(runtime, "e2", age_s=3600, queued_age_s=1000)
        retrying = store(runtime, "e3", age_s=3600, queued_age_s=1000, status="retrying")
        store(runtime, "e4", age_s=10, queued_age_s=None)  # too young: its first message may be on its way
        store(runtime, "e5", age_s=3600, queued_age_s=30)  # queued recently
        store(runtime, "e6", age_s=3600, queued_age_s=None, status="processed")
        store(runtime, "e7", age_s=3600, queued_age_s=None, status="ignored")
        result = sweep(runtime)
        assert result == {"found": 3, "requeued": 3, "carried": 0, "publish_failed": False, "has_more": False}
        swept = recorder.events
        assert swept == [never_queued, lost_message, retrying]
        assert all(event(runtime, i).queued_at is not None for i in swept)
        assert sweep(runtime, batch_size=7)["found"] == 0  # just queued: left alone
    finally:
        runtime.close()


def test_the_sweeper_is_bounded_per_run_and_stops_when_publishing_fails(settings: Settings) -> None:
    recorder = Recorder(fail_after=2)
    runtime = build(settings, registry=TEST_REGISTRY, ports=replace(RECORDING_PORTS, drain_queue=recorder))
    try:
        rows = [store(runtime, f"e{i}", age_s=120, queued_age_s=None) for i in range(5)]
        assert sweep(runtime, batch_size=4) == {
            "found": 4,
            "requeued": 2,
            "carried": 0,
            "publish_failed": True,
            "has_more": True,
        }
        assert [event(runtime, r).queued_at is not None for r in rows] == [True, True, False, False, False]
    finally:
        runtime.close()


def test_the_sweeper_goes_through_the_dispatcher_by_default(runtime: Runtime) -> None:
    row = store(runtime, "e1", age_s=120, queued_age_s=None)  # no drain on the ledger: a first one
    assert sweep(runtime)["requeued"] == 1
    [run] = [r for r in runtime.ledger.runs(job="webhook-drain")]
    assert run.dispatch_key == f"webhook-drain:{row}"
    assert run.status == "queued" and run.params == {"event_id": row}


def _first_drain(runtime: Runtime, row: int, age: timedelta) -> str:
    """Record the event's first drain as the intake does, `age` ago."""
    key = drain_key(row)
    then = SqlLedger(runtime.engine, clock=lambda: datetime.now(UTC) - age)
    then.record_dispatch(
        runtime.dispatcher.prepare("webhook-drain", trigger="http", params={"event_id": row}, key=key)
    )
    return key


def test_the_sweeper_leaves_alone_an_event_whose_drain_is_still_in_play(runtime: Runtime) -> None:
    """In a backlog the first drain waits (deferred for a slot of the cap) past the sweeper's 15
    minutes: a re-drive under a new key made one more message per event per quarter hour."""
    row = store(runtime, "e1", age_s=1200, queued_age_s=1200)
    key = _first_drain(runtime, row, timedelta(minutes=20))
    runtime.ledger.defer(key, detail="concurrency cap 8 reached")

    assert sweep(runtime)["carried"] == 1
    assert [r.dispatch_key for r in runtime.ledger.runs(job="webhook-drain")] == [key]
    assert sweep(runtime, again=1)["found"] == 0  # looked at: left alone for another quarter hour


def test_an_event_is_redriven_as_replays_of_its_first_drain_one_in_play_at_a_time(
    runtime: Runtime, rabbit: Rabbit
) -> None:
    row = store(runtime, "e1", age_s=1200, queued_age_s=1200)
    key = _first_drain(runtime, row, timedelta(minutes=20))
    runtime.ledger.finish(key, RunStatus.FAILED, token=None, detail="enqueue failed: broker down")

    assert sweep(runtime, requeue_after_s=0)["requeued"] == 1
    first = runtime.ledger.get(f"{key}~replay1")
    assert first is not None and first.status == "queued" and first.params == {"event_id": row}
    # Its message is on its way: another sweep publishes nothing more.
    assert sweep(runtime, requeue_after_s=0, again=1) == {
        "found": 1,
        "requeued": 0,
        "carried": 1,
        "publish_failed": False,
        "has_more": False,
    }
    assert rabbit.message_count(runtime.registry["webhook-drain"].queue) == 1
    # Once it has ended with the event still open, the next re-drive follows it.
    runtime.ledger.finish(first.dispatch_key, RunStatus.DEAD, token=None, detail="retries exhausted")
    assert sweep(runtime, requeue_after_s=0, again=2)["requeued"] == 1
    second = runtime.ledger.get(f"{key}~replay2")
    assert second is not None and second.replay_of == runtime.ledger.get(key).id  # type: ignore[union-attr]


def test_a_redriven_drain_carries_the_correlation_id_of_the_request_that_delivered_the_event(
    runtime: Runtime,
) -> None:
    delivered = store(
        runtime, "e1", age_s=120, queued_age_s=None, headers={CORRELATION_HEADER: "cid-of-post"}
    )
    unknown = store(runtime, "e2", age_s=120, queued_age_s=None)  # stored without one
    swept = runtime.dispatcher.dispatch("webhook-sweeper", trigger="cli", params={}, inline=True)
    assert swept.result is not None and swept.result["requeued"] == 2
    drains = {r.params["event_id"]: r for r in runtime.ledger.runs(job="webhook-drain")}
    assert drains[delivered].correlation_id == "cid-of-post"
    # Otherwise the sweeper's own id: a run's dispatches carry the id of the run that made them.
    assert drains[unknown].correlation_id == swept.correlation_id
    assert swept.correlation_id != "cid-of-post"


def test_an_event_is_still_redriven_after_retention_purged_an_early_redrive(runtime: Runtime) -> None:
    """Replays were numbered by counting them: once retention purged `~replay1`, the next key was
    `~replay2` again, a dead run, so every sweep answered "carried" and the event stayed open."""
    row = store(runtime, "e1", age_s=120, queued_age_s=None)
    key = _first_drain(runtime, row, timedelta(0))
    queue = DispatchDrainQueue(runtime.dispatcher)

    def end(k: str, *, days_ago: float = 0) -> None:
        runtime.ledger.finish(k, RunStatus.DEAD, token=None, detail="retries exhausted")
        with runtime.sessions() as s:
            s.execute(
                update(Run)
                .where(Run.dispatch_key == k)
                .values(finished_at=datetime.now(UTC) - timedelta(days=days_ago))
            )
            s.commit()

    end(key)
    assert queue.redrive(row, correlation_id=None) == "queued"
    end(f"{key}~replay1", days_ago=40)
    assert queue.redrive(row, correlation_id=None) == "queued"
    end(f"{key}~replay2")
    assert runtime.ledger.purge_runs(finished_before=datetime.now(UTC) - timedelta(days=30), limit=100) == 1

    assert queue.redrive(row, correlation_id=None) == "queued"
    assert runtime.ledger.get(f"{key}~replay3").status == RunStatus.QUEUED  # type: ignore[union-attr]


def test_drain_keys_name_the_event() -> None:
    assert webhook_drain.drain_key(7) == "webhook-drain:7"


def test_a_sweep_run_by_a_worker_passes_its_correlation_id_on(runtime: Runtime) -> None:
    row = store(runtime, "e1", age_s=120, queued_age_s=None)
    swept = runtime.dispatcher.dispatch("webhook-sweeper", trigger="cli", correlation_id="cid-of-sweep")
    queue = runtime.registry["webhook-sweeper"].queue
    worker = dramatiq.Worker(runtime.broker, queues={queue}, worker_threads=1)
    worker.start()
    try:
        wait_for(lambda: runtime.ledger.runs(job="webhook-drain"), what="the drain the sweep queues")
    finally:
        worker.stop()
        runtime.broker.flush(queue)
    [drain_run] = runtime.ledger.runs(job="webhook-drain")
    assert drain_run.params == {"event_id": row} and drain_run.correlation_id == "cid-of-sweep"
    assert swept.correlation_id == "cid-of-sweep"
