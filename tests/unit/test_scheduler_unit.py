"""Scheduler rules without IO: a failed publish is retried soon, a store fault delays the start, overrides."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from actors.dispatch import PublishFailed
from domain.registry import JOBS, JobSpec, Registry
from scheduling.periodic import Loop
from scheduling.scheduler import Scheduler
from store.errors import StoreUnavailable
from tests.unit.test_cron_semantics import FakeClock, RecordingDispatcher, _noop

T0 = datetime(2026, 3, 10, 12, 0, 5, tzinfo=UTC)
SPEC = JobSpec(name="j", run=_noop, actor_name="j", description="", cron="*/5 * * * *", missed="skip")


class FlakyDispatcher(RecordingDispatcher):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def dispatch(self, job: str, *, trigger: str, slot: datetime | None = None) -> object:
        if self.failures:
            self.failures -= 1
            raise PublishFailed("RabbitMQ", "connection refused")
        return super().dispatch(job, trigger=trigger, slot=slot)


class History:
    def __init__(self, *, down_for: int = 0) -> None:
        self.down_for = down_for

    def latest_slots(self, *, jobs: Sequence[str]) -> Mapping[str, datetime]:
        if self.down_for:
            self.down_for -= 1
            raise StoreUnavailable("database is down")
        return {}


def test_a_failed_publish_is_retried_at_the_next_wake_not_lost_and_not_fatal() -> None:
    dispatcher = FlakyDispatcher(failures=1)
    scheduler = Scheduler(registry=Registry([SPEC]), dispatcher=dispatcher, history=History(), retry_s=15)
    fired = scheduler.tick(T0)
    assert [f.action for f in fired] == ["failed"]
    assert scheduler.is_due(SPEC, T0)
    assert scheduler.next_wake(SPEC, T0) == T0 + timedelta(seconds=15)

    fired = scheduler.tick(T0 + timedelta(seconds=15))
    assert [f.action for f in fired] == ["dispatched"]
    assert dispatcher.dispatched == [("j", T0.replace(second=0))]
    assert scheduler.next_wake(SPEC, T0 + timedelta(seconds=15)) == T0.replace(minute=5, second=0)


class StalledDispatcher(RecordingDispatcher):
    """A RabbitMQ alarm: each publish gives up after about 30 s, past the scheduler's 15 s retry."""

    def __init__(self, clock: FakeClock, failures: int) -> None:
        super().__init__()
        self.clock, self.failures = clock, failures

    def dispatch(self, job: str, *, trigger: str, slot: datetime | None = None) -> object:
        if self.failures:
            self.failures -= 1
            self.clock.advance(31)
            raise PublishFailed("RabbitMQ", "connection blocked")
        return super().dispatch(job, trigger=trigger, slot=slot)


def test_publishes_that_outlast_the_retry_for_hours_do_not_overflow_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """periodiq's `schedule` called itself for every wake already past when it looked: once per
    failed publish here, until a RecursionError after about eight hours."""
    clock = FakeClock(T0)
    clock.patch(monkeypatch)
    spec = replace(SPEC, cron="* * * * *", missed="catch-up-latest")
    dispatcher = StalledDispatcher(clock, failures=1500)  # about thirteen hours
    loop = Loop(Scheduler(registry=Registry([spec]), dispatcher=dispatcher, history=History(), retry_s=15))
    loop.schedule()  # one wake of periodiq's: it goes on until a wake is in the future
    assert dispatcher.failures == 0 and dispatcher.dispatched


def test_a_stop_signal_during_stalled_publishes_ends_the_loop_after_the_current_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock(T0)
    clock.patch(monkeypatch)
    loop: Loop | None = None

    class StoppedMeanwhile(StalledDispatcher):
        def dispatch(self, job: str, *, trigger: str, slot: datetime | None = None) -> object:
            assert loop is not None
            loop.stopping = True  # what the SIGTERM handler sets, during the first stalled publish
            return super().dispatch(job, trigger=trigger, slot=slot)

    dispatcher = StoppedMeanwhile(clock, failures=200)
    spec = replace(SPEC, cron="* * * * *", missed="catch-up-latest")
    loop = Loop(Scheduler(registry=Registry([spec]), dispatcher=dispatcher, history=History(), retry_s=15))
    loop.schedule()
    assert dispatcher.failures == 199


def test_a_store_fault_at_start_delays_the_job_until_the_ledger_answers() -> None:
    dispatcher = RecordingDispatcher()
    scheduler = Scheduler(registry=Registry([SPEC]), dispatcher=dispatcher, history=History(down_for=1))
    assert scheduler.tick(T0) == []
    assert scheduler.next_wake(SPEC, T0) == T0 + timedelta(seconds=15)
    assert [f.action for f in scheduler.tick(T0 + timedelta(seconds=15))] == ["dispatched"]


def test_a_job_without_history_starts_with_the_current_slot_when_within_the_grace_only() -> None:
    dispatcher = RecordingDispatcher()
    late = Scheduler(registry=Registry([SPEC]), dispatcher=dispatcher, history=History(), grace_s=60)
    assert late.tick(T0 + timedelta(minutes=2)) == []
    assert dispatcher.dispatched == [] and dispatcher.missed == []


def test_schedule_overrides_replace_or_remove_crons_and_name_bad_input() -> None:
    registry = JOBS.rescheduled({"ledger-retention": "5 4 * * *", "reap-leases": None})
    assert registry["ledger-retention"].cron == "5 4 * * *"
    assert registry["reap-leases"].cron is None
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        JOBS.rescheduled({"nope": "* * * * *"})
    with pytest.raises(ValueError, match="expected five fields"):
        JOBS.rescheduled({"reap-leases": "* * * * * *"})
    with pytest.raises(ValueError, match="unknown time zone"):
        JobSpec(name="x", run=_noop, actor_name="x", description="", cron="@daily", tz="Mars/Olympus")
    with pytest.raises(ValueError, match=re.escape("cron expression '0 0 31 2 *' never fires")):
        JOBS.rescheduled({"reap-leases": "0 0 31 2 *"})


def test_a_job_that_is_only_triggered_cannot_be_given_a_schedule() -> None:
    """webhook-drain runs on an event's `event_id`: scheduled, it would fail a run every minute."""
    with pytest.raises(ValueError, match="job 'webhook-drain' is only triggered, never scheduled"):
        JOBS.rescheduled({"webhook-drain": "* * * * *"})
    assert JOBS.rescheduled({"webhook-drain": None})["webhook-drain"].cron is None
