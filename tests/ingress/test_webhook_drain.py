"""The drain and the sweeper (domain jobs) run inline through the runner, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest

from domain import webhook_drain
from domain.errors import TransientError
from domain.ports import Ports
from domain.webhook_drain import DRAIN_MAX_ATTEMPTS, drain_key
from domain.webhooks import CORRELATION_HEADER, KNOWN_TYPES
from offload.settings import Settings
from offload.wiring import Runtime, build
from store.webhook_events import NewWebhookEvent
from tests.ingress.conftest import effects_of, stored_events
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
    d = runtime.dispatcher.dispatch(
        "webhook-drain",
        trigger="cli",
        params={"event_id": row_id},
        key=drain_key(row_id, via=via),
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
    """A DrainQueue that records what it was asked to publish, or refuses after `fail_after`."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.keys: list[str] = []
        self.fail_after = fail_after

    def drain(self, event_id: int, *, key: str, correlation_id: str | None) -> bool:
        if self.fail_after is not None and len(self.keys) >= self.fail_after:
            return False
        self.keys.append(key)
        return True


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
        assert result == {"found": 3, "requeued": 3, "publish_failed": False, "has_more": False}
        swept = [int(k.split(":")[1]) for k in recorder.keys]
        assert swept == [never_queued, lost_message, retrying]
        assert all(
            k.startswith(f"webhook-drain:{i}:webhook-sweeper:")
            for i, k in zip(swept, recorder.keys, strict=True)
        )
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
            "publish_failed": True,
            "has_more": True,
        }
        assert [event(runtime, r).queued_at is not None for r in rows] == [True, True, False, False, False]
    finally:
        runtime.close()


def test_the_sweeper_goes_through_the_dispatcher_by_default(runtime: Runtime) -> None:
    row = store(runtime, "e1", age_s=120, queued_age_s=None)
    assert sweep(runtime)["requeued"] == 1
    [run] = [r for r in runtime.ledger.runs(job="webhook-drain")]
    assert run.dispatch_key.startswith(f"webhook-drain:{row}:webhook-sweeper:")
    assert run.status == "queued" and run.params == {"event_id": row}


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


def test_drain_keys_name_the_event() -> None:
    assert webhook_drain.drain_key(7) == "webhook-drain:7"
    assert webhook_drain.drain_key(7, via="x") == "webhook-drain:7:x"


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
