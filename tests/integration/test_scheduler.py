"""The scheduler against the real stores and RabbitMQ, with a fake clock: one run per slot, missed slots."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import text

from domain.registry import Registry
from domain.runs import RunStatus
from offload.wiring import Runtime
from scheduling.scheduler import Scheduler
from tests.support.procs import Workers, wait_for

BERLIN = ZoneInfo("Europe/Berlin")


def scheduler(runtime: Runtime) -> Scheduler:
    """A scheduler process of its own: its state starts from the ledger, like a fresh `offload scheduler`."""
    return Scheduler(registry=runtime.registry, dispatcher=runtime.dispatcher, history=runtime.ledger)


def only(runtime: Runtime, *jobs: str) -> Runtime:
    """`runtime` whose schedulers see only `jobs` (the registry keeps every job for the workers)."""
    runtime.registry = runtime.registry.rescheduled(
        {spec.name: None for spec in runtime.registry if spec.cron and spec.name not in jobs}
    )
    return runtime


def effects(runtime: Runtime) -> dict[str, int]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT dispatch_key, count(*) FROM test_effects GROUP BY dispatch_key"))
        return {key: int(n) for key, n in rows}


def slots(runtime: Runtime, job: str) -> dict[str, str]:
    """slot (local HH:MM) -> ledger status, for one job."""
    return {
        run.slot.astimezone(BERLIN).strftime("%H:%M"): run.status
        for run in runtime.ledger.runs(job=job, limit=100)
        if run.slot is not None
    }


def test_two_schedulers_and_ten_http_triggers_in_a_slot_run_once_and_the_next_slot_again(
    runtime: Runtime, workers: Workers
) -> None:
    job = "test-every-5-skip"
    only(runtime, job)
    now = datetime(2026, 3, 10, 9, 5, 10, tzinfo=BERLIN)
    runtime.dispatcher.clock = lambda: now.astimezone(UTC)
    first, second = scheduler(runtime), scheduler(runtime)

    def one_slot() -> int:
        """Fire the slot from both schedulers and 10 HTTP callers; returns how many reached the ledger."""
        with ThreadPoolExecutor(max_workers=6) as pool:
            ticks = [pool.submit(s.tick, now) for s in (first, second)]
            http = [pool.submit(runtime.dispatcher.dispatch, job, trigger="http") for _ in range(10)]
            answers = [h.result() for h in http]
            fired = [f for t in ticks for f in t.result() if f.action != "failed"]
        assert len({a.dispatch_key for a in answers}) == 1
        assert {f.slot for f in fired} <= {answers[0].slot}
        fresh = [a for a in answers if not a.duplicate] + [f for f in fired if f.action == "dispatched"]
        assert len(fresh) == 1
        return len(answers) + len(fired)

    # A scheduler that could not read the ledger (SQLite busy under load) fires at its next wake
    # instead; the slot still runs once, and the count of duplicates says how many calls it saw.
    calls = [one_slot()]
    now += timedelta(minutes=5)
    calls.append(one_slot())

    workers.start(threads=4)
    wait_for(
        lambda: sorted(slots(runtime, job).items()) == [("09:05", "succeeded"), ("09:10", "succeeded")],
        what="both slots to succeed",
        timeout_s=30,
    )
    runs = runtime.ledger.runs(job=job)
    assert [r.duplicates for r in reversed(runs)] == [n - 1 for n in calls]
    assert {r.trigger for r in runs} <= {"schedule", "http"}
    assert sorted(effects(runtime).values()) == [1, 1]
    assert set(effects(runtime)) == {r.dispatch_key for r in runs}


def test_scheduler_down_for_five_slots_follows_each_jobs_missed_slot_policy(runtime: Runtime) -> None:
    jobs = ("test-every-5-skip", "test-every-5-latest", "test-every-5-each")
    only(runtime, *jobs)
    start = datetime(2026, 3, 10, 12, 0, 5, tzinfo=BERLIN)
    fired = scheduler(runtime).tick(start)
    assert {(f.job, f.action) for f in fired} == {(job, "dispatched") for job in jobs}

    # Down from 12:00 to 12:27:30: 12:05 ... 12:25 were due and nobody fired them.
    restarted = scheduler(runtime)
    fired = restarted.tick(start + timedelta(minutes=27, seconds=25))
    assert len(fired) == 15
    late = ["12:05", "12:10", "12:15", "12:20", "12:25"]
    assert slots(runtime, "test-every-5-skip") == {"12:00": "queued", **dict.fromkeys(late, "missed")}
    assert slots(runtime, "test-every-5-latest") == {
        "12:00": "queued",
        **dict.fromkeys(late[:-1], "missed"),
        "12:25": "queued",
    }
    assert slots(runtime, "test-every-5-each") == {"12:00": "queued", **dict.fromkeys(late, "queued")}

    missed = runtime.ledger.runs(job="test-every-5-skip", status=RunStatus.MISSED)
    assert {r.trigger for r in missed} == {"schedule"}
    assert all(r.finished_at is not None for r in missed)
    events = runtime.ledger.events(missed[0].dispatch_key)
    assert [e.status for e in events] == ["missed"]
    assert "policy skip" in (events[0].detail or "")

    # Back on time: the next slot runs under every policy, and nothing is settled twice.
    fired = restarted.tick(start + timedelta(minutes=30))
    assert {(f.job, f.action) for f in fired} == {(job, "dispatched") for job in jobs}
    assert all(slots(runtime, job)["12:30"] == "queued" for job in jobs)
    assert restarted.tick(start + timedelta(minutes=31)) == []


def test_a_scheduler_down_longer_than_a_jobs_window_settles_the_slots_within_it(runtime: Runtime) -> None:
    """Down 65 minutes with a 60-minute window: the slots of the last hour are owed. They were
    neither run nor recorded: the scheduler looked for the last slot only within the window, found
    none, and started afresh."""
    job = "test-every-5-each"
    runtime.registry = Registry([replace(runtime.registry[job], missed_window_ms=3_600_000)])
    start = datetime(2026, 3, 10, 12, 0, 5, tzinfo=BERLIN)
    assert [f.action for f in scheduler(runtime).tick(start)] == ["dispatched"]
    fired = scheduler(runtime).tick(start + timedelta(minutes=65))  # the window: from 12:05:05, less a minute
    assert [f.slot.astimezone(BERLIN).strftime("%H:%M") for f in fired] == [
        f"{h}:{m:02d}" for h, m in [(12, m) for m in range(5, 60, 5)] + [(13, 0), (13, 5)]
    ]
    assert {f.action for f in fired} == {"dispatched"}


def test_missed_slots_are_bounded_and_a_slot_run_by_another_trigger_is_never_recorded_missed(
    runtime: Runtime,
) -> None:
    job = "test-every-5-skip"
    only(runtime, job)
    start = datetime(2026, 3, 10, 12, 0, 5, tzinfo=BERLIN)
    stalled = Scheduler(
        registry=runtime.registry, dispatcher=runtime.dispatcher, history=runtime.ledger, max_missed_slots=4
    )
    stalled.tick(start)
    # While this scheduler stalled, an external cron caller ran 12:10.
    runtime.dispatcher.clock = lambda: (start + timedelta(minutes=10)).astimezone(UTC)
    runtime.dispatcher.dispatch(job, trigger="http")

    fired = stalled.tick(start + timedelta(minutes=30, seconds=25))
    # 12:05 ... 12:30 were due; the newest five are settled (four late plus the on-time 12:30).
    assert [(f.slot.astimezone(BERLIN).strftime("%H:%M"), f.action) for f in fired] == [
        ("12:10", "missed"),
        ("12:15", "missed"),
        ("12:20", "missed"),
        ("12:25", "missed"),
        ("12:30", "dispatched"),
    ]
    assert slots(runtime, job) == {
        "12:00": "queued",
        "12:10": "queued",
        "12:15": "missed",
        "12:20": "missed",
        "12:25": "missed",
        "12:30": "queued",
    }


def test_scheduled_run_retried_long_after_its_slot_is_not_dropped_as_stale(
    runtime: Runtime, workers: Workers, tmp_path: Path
) -> None:
    """periodiq's skip_delay would drop this retry (its slot is 10 minutes old); offload's path keeps it."""
    job = "test-every-5-flaky"
    slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    d = runtime.dispatcher.dispatch(job, trigger="schedule", slot=slot)
    workers.start(threads=2, OFFLOAD_TEST_FLAKY_DIR=str(tmp_path))
    run = wait_for(
        lambda: (r := runtime.ledger.get(d.dispatch_key)) and r.status == "succeeded" and r,
        what="the retried run to succeed",
        timeout_s=30,
    )
    assert run.attempt == 2
    assert [e.status for e in runtime.ledger.events(d.dispatch_key)] == [
        "queued",
        "running",
        "retrying",
        "running",
        "succeeded",
    ]
    assert effects(runtime) == {d.dispatch_key: 1}


def test_a_restarted_scheduler_owes_the_slots_a_dispatch_with_parameters_or_a_failed_publish_left(
    runtime: Runtime,
) -> None:
    job = "test-every-5-each"
    only(runtime, job)
    start = datetime(2026, 3, 10, 12, 0, 5, tzinfo=BERLIN)
    assert [f.action for f in scheduler(runtime).tick(start)] == ["dispatched"]
    # The scheduler is down; at 12:31 an operator dispatches the job with a parameter (a key of its own).
    runtime.dispatcher.clock = lambda: (start + timedelta(minutes=31)).astimezone(UTC)
    runtime.dispatcher.dispatch(job, trigger="cli", params={"tag": "one-off"})
    restarted = scheduler(runtime).tick(start + timedelta(minutes=31, seconds=10))
    owed = ["12:05", "12:10", "12:15", "12:20", "12:25", "12:30"]
    assert [(f.slot.astimezone(BERLIN).strftime("%H:%M"), f.action) for f in restarted] == [
        (slot, "dispatched") for slot in owed
    ]
    # The publish of 12:35 fails and its run is `failed`; a scheduler started after that owes it.
    slot = datetime(2026, 3, 10, 12, 35, tzinfo=BERLIN)
    failed = runtime.dispatcher.prepare(job, trigger="schedule", slot=slot.astimezone(UTC))
    runtime.ledger.record_dispatch(failed)
    runtime.ledger.finish(failed.dispatch_key, RunStatus.FAILED, token=None, detail="broker down")
    again = scheduler(runtime).tick(slot + timedelta(seconds=25))
    assert [(f.slot, f.action) for f in again] == [(slot.astimezone(UTC), "dispatched")]
    assert slots(runtime, job)["12:35"] == RunStatus.QUEUED
