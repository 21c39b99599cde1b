"""The scheduler fires at exactly cron's minutes, in the job's zone, over a whole year.

periodiq's own loop (its `schedule()`, with a fake clock in place of pendulum.now, sleep and alarm)
drives the Scheduler here, so the minutes compared are the ones the `offload scheduler` process
would dispatch. The reference, computed independently in the test, is croniter's forward
iteration with Vixie cron's rules for daylight-saving changes (cronie's crontab(5): "if the time
has moved backwards by less than 3 hours, those jobs that fall into the repeated time will not be
re-run. Only jobs that run at a particular time (not specified as @hourly, nor with '*' in the
hour or minute specifier) are affected"; wildcard jobs "are run based on the new time").
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pendulum
import periodiq
import pytest
from croniter import croniter

from domain import cron, keys
from domain.context import JobContext
from domain.registry import JOBS, JobSpec, Registry
from scheduling.periodic import Loop
from scheduling.scheduler import Scheduler

ZONES = ("UTC", "America/New_York", "Europe/Berlin")
YEAR = 2025  # DST: US Mar 9 / Nov 2, EU Mar 30 / Oct 26; not a leap year

#: Every day-of-week form (numbers with 0 and 7 for Sunday, ranges, lists, steps, names, nth
#: weekday), month names, the @aliases, the DOM/DOW OR rule, and times inside DST gaps and folds.
EXPRESSIONS = [
    "0 0 * * 0",
    "0 0 * * 7",
    "0 0 * * sun",
    "0 0 * * SUN",
    "30 8 * * 1",
    "30 8 * * mon",
    "0 9 * * 1-5",
    "0 9 * * mon-fri",
    "0 9 * * MON-FRI",
    "0 10 * * 1,3,5",
    "0 10 * * mon,wed,fri",
    "0 11 * * sat,sun",
    "0 11 * * 6,0",
    "0 12 * * 5-7",
    "0 12 * * */2",
    "0 13 * * 1-5/2",
    "0 14 * * 5#2",
    "0 7 * * tue",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "@monthly",
    "@yearly",
    "@annually",
    "0 0 1 * *",
    "0 0 15 * *",
    "0 0 31 * *",
    "0 0 L * *",
    "0 12 29 2 *",
    "0 0 1-7 * *",
    "0 6 */10 * *",
    "0 9 1 * mon",
    "0 0 13 * 5",
    "0 12 1-7 * 1",
    "0 8 * jan mon",
    "0 8 1 jan-mar *",
    "0 8 1 */3 *",
    "59 23 31 dec *",
    "30 2 * * *",
    "30 1 * * *",
    "0,30 1 * * *",
    "0,30 2 * * *",
    "0 2 * * *",
    "0 3 * * *",
    "*/20 1-3 * * 0",
    "*/15 2 * * sun",
    "0 6,18 * * *",
    "5,35 */6 * * *",
    "0 0-23/5 * * *",
    "15 */2 * * 6",
]


def cron_minutes(expr: str, tz: str) -> list[datetime]:
    """cron's fire times within the local calendar year, in UTC: the reference.

    croniter matches wall-clock time, so it fires a job twice in a repeated hour and moves a
    skipped minute to just after the change. cron runs a job at a particular time once per wall
    time, and a wildcard job only at minutes its expression matches.
    """
    zone = ZoneInfo(tz)
    start = datetime(YEAR, 1, 1, tzinfo=zone) - timedelta(minutes=1)
    end = datetime(YEAR + 1, 1, 1, tzinfo=zone)
    minute, hour = croniter(expr).expressions[:2]
    particular = "*" not in (minute[0], hour[0])
    it = croniter(expr, start)
    out: list[datetime] = []
    walls: set[datetime] = set()
    while (at := it.get_next(datetime)) < end:
        wall = at.astimezone(zone).replace(tzinfo=None)
        if particular and wall in walls:
            continue
        if not particular and not croniter.match(expr, wall):
            continue
        walls.add(wall)
        if not out or out[-1] != at.astimezone(UTC):
            out.append(at.astimezone(UTC))
    return out


@dataclass
class Recorded:
    duplicate: bool = False
    status: str = "queued"


class RecordingDispatcher:
    def __init__(self) -> None:
        self.dispatched: list[tuple[str, datetime]] = []
        self.missed: list[tuple[str, datetime]] = []

    def dispatch(self, job: str, *, trigger: str, slot: datetime | None = None) -> Recorded:
        assert trigger == "schedule" and slot is not None
        self.dispatched.append((job, slot))
        return Recorded()

    def miss(self, job: str, *, slot: datetime, detail: str) -> Recorded:
        self.missed.append((job, slot))
        return Recorded()


class History:
    def __init__(self, latest: Mapping[str, datetime]) -> None:
        self.latest = latest

    def latest_slots(self, *, jobs: Sequence[str]) -> Mapping[str, datetime]:
        return {job: at for job, at in self.latest.items() if job in jobs}


class FakeClock:
    """Stands in for periodiq's pendulum.now, sleep, alarm and signal."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = self

        class FakePendulum:
            @staticmethod
            def now() -> Any:
                return pendulum.instance(clock.now)

        monkeypatch.setattr(periodiq, "pendulum", FakePendulum)
        monkeypatch.setattr(periodiq, "sleep", self.advance)
        monkeypatch.setattr(periodiq, "alarm", self.advance)
        monkeypatch.setattr(periodiq, "signal", lambda *a: None)


def _noop(ctx: JobContext) -> Mapping[str, Any]:
    return {}


def periodiq_minutes(
    exprs: Sequence[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str, list[datetime], list[datetime]]]:
    """Run periodiq's loop over the year for one job per (expr, tz); yield what each dispatched."""
    for expr, tz in exprs:
        spec = JobSpec(name="j", run=_noop, actor_name="j", description="", cron=expr, tz=tz)
        start = datetime(YEAR, 1, 1, tzinfo=ZoneInfo(tz)).astimezone(UTC)
        end = datetime(YEAR + 1, 1, 1, tzinfo=ZoneInfo(tz)).astimezone(UTC)
        dispatcher = RecordingDispatcher()
        scheduler = Scheduler(
            registry=Registry([spec]),
            dispatcher=dispatcher,
            history=History({"j": start - timedelta(minutes=1)}),
        )
        clock = FakeClock(start - timedelta(seconds=0.4))
        clock.patch(monkeypatch)
        loop = Loop(scheduler)
        while clock.now < end:
            loop.schedule()
        fired = [slot for _, slot in dispatcher.dispatched if slot < end]
        yield expr, tz, fired, [slot for _, slot in dispatcher.missed]


def test_the_table_covers_at_least_forty_expressions_in_three_zones() -> None:
    assert len(set(EXPRESSIONS)) == len(EXPRESSIONS) >= 40
    assert any(cron_minutes(e, "Europe/Berlin") for e in EXPRESSIONS)


def test_scheduler_fires_at_cron_minutes_over_a_year_in_utc_and_dst_zones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    combos = [(expr, tz) for tz in ZONES for expr in EXPRESSIONS]
    compared = 0
    for expr, tz, fired, missed in periodiq_minutes(combos, monkeypatch):
        reference = cron_minutes(expr, tz)
        assert fired == reference, f"{expr!r} in {tz}: first difference " + _first_difference(
            fired, reference
        )
        assert missed == []
        compared += len(reference)
    assert compared > 20_000


def test_http_slot_of_every_minute_is_the_latest_cron_fire_at_or_before_it() -> None:
    """An HTTP trigger keys on schedule_slot: it must name the slot the scheduler fires.

    schedule_slot is a step function; checking each step's first and last minute checks them all.
    """
    for tz in ZONES:
        for expr in EXPRESSIONS:
            fires = cron_minutes(expr, tz)
            step = max(1, len(fires) // 40)
            for i, (before, after) in enumerate(itertools.pairwise(fires)):
                if i % step and not _near_dst(before):
                    continue
                assert keys.schedule_slot(expr, tz, before) == before, (expr, tz, before)
                last_minute = after - timedelta(minutes=1)
                assert keys.schedule_slot(expr, tz, last_minute + timedelta(seconds=59)) == before, (
                    expr,
                    tz,
                    last_minute,
                )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# New York, 2026: clocks go back at 02:00 EDT on November 1 (01:00-01:59 happens twice, 05:00 and
# 06:00 UTC) and forward at 02:00 EST on March 8 (02:00-02:59 never happens; 07:00 UTC is 03:00 EDT).
DST_DAYS = [
    # (expression, day's first minute UTC, that day's fires, UTC)
    ("30 1 * * *", utc(2026, 11, 1, 4), [utc(2026, 11, 1, 5, 30)]),  # not again at 01:30 EST
    ("0 1-2 * * *", utc(2026, 11, 1, 4), [utc(2026, 11, 1, 5), utc(2026, 11, 1, 7)]),
    ("@hourly", utc(2026, 11, 1, 4), [utc(2026, 11, 1, 4) + timedelta(hours=h) for h in range(24)]),
    (
        "*/30 1 * * *",
        utc(2026, 11, 1, 4),
        [utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 30)],
    ),
    ("30 2 * * *", utc(2026, 3, 8, 5), [utc(2026, 3, 8, 7)]),  # skipped: runs at 03:00 EDT
    ("0,30 2 * * *", utc(2026, 3, 8, 5), [utc(2026, 3, 8, 7)]),  # both skipped: one run at 03:00
    ("*/30 2 * * *", utc(2026, 3, 8, 5), []),  # a wildcard job does not run for skipped minutes
    (
        "0 * * * *",
        utc(2026, 3, 8, 5),
        [utc(2026, 3, 8, 5) + timedelta(hours=h) for h in range(24)],
    ),
]


@pytest.mark.parametrize(("expr", "start", "want"), DST_DAYS)
def test_daylight_saving_days_follow_crons_rules(expr: str, start: datetime, want: list[datetime]) -> None:
    got = list(
        cron.fires(
            expr,
            "America/New_York",
            after=start - timedelta(minutes=1),
            until=start + timedelta(hours=23, minutes=59),
        )
    )
    assert got == want
    if want:
        # An HTTP trigger in the second pass of a repeated hour names the slot that already ran.
        assert keys.schedule_slot(expr, "America/New_York", want[0] + timedelta(minutes=59)) == max(
            w for w in want if w <= want[0] + timedelta(minutes=59)
        )


def test_a_job_at_01_30_runs_once_when_new_york_repeats_the_hour() -> None:
    assert keys.schedule_slot("30 1 * * *", "America/New_York", utc(2026, 11, 1, 6, 45)) == utc(
        2026, 11, 1, 5, 30
    )


@pytest.mark.parametrize(
    ("expr", "tz", "now", "slot"),
    [
        # New York, 2025-11-02: 01:00-01:59 happens twice (05:00-05:59 and 06:00-06:59 UTC)
        ("0,30 1 * * *", "America/New_York", utc(2025, 11, 2, 7), utc(2025, 11, 2, 5, 30)),
        ("0,30 1 * * *", "America/New_York", utc(2025, 11, 2, 18), utc(2025, 11, 2, 5, 30)),
        ("0-59/20 1 * * *", "America/New_York", utc(2025, 11, 2, 9), utc(2025, 11, 2, 5, 40)),
        # Berlin, 2025-10-26: 02:00-02:59 twice
        ("0,30 2 * * *", "Europe/Berlin", utc(2025, 10, 26, 2), utc(2025, 10, 26, 0, 30)),
        # Lord Howe, 2025-04-06: 01:30-01:59 twice (a 30-minute change)
        ("35,50 1 * * *", "Australia/Lord_Howe", utc(2025, 4, 5, 15, 30), utc(2025, 4, 5, 14, 50)),
    ],
)
def test_the_slot_after_a_repeated_hour_is_its_first_pass_fire(
    expr: str, tz: str, now: datetime, slot: datetime
) -> None:
    """With several fires in the repeated hour, every step back from the day after landed on a
    skipped second-pass fire, and an HTTP trigger raised for the rest of the day."""
    assert keys.schedule_slot(expr, tz, now) == slot


#: Zones whose clocks go back on the hour (New York, Berlin), at 02:00 by 30 minutes (Lord Howe),
#: and at 03:45 (Chatham, whose repeated span 02:45-03:44 crosses an hour).
FOLD_ZONES = ("America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Chatham")
WILDCARD_EXPRESSIONS = ("*/10 2 * * *", "*/7 2 * * *", "*/20 1,2 * * *", "* 1-3 * * *", "5 * * * *")


def _clocks_go_back(tz: str) -> datetime:
    """The first hour of YEAR, in UTC, at which `tz`'s clock has gone back."""
    zone, at = ZoneInfo(tz), datetime(YEAR, 1, 1, tzinfo=UTC)
    while (at + timedelta(hours=1)).astimezone(zone).utcoffset() >= at.astimezone(zone).utcoffset():  # type: ignore[operator]
        at += timedelta(hours=1)
    return at + timedelta(hours=1)


@pytest.mark.parametrize("tz", FOLD_ZONES)
def test_wildcard_jobs_run_in_both_passes_of_a_repeated_hour_wherever_the_change_falls(tz: str) -> None:
    """Reference: every minute of the night whose wall time the expression matches. croniter revisits
    a repeated span only when the change falls on the hour, so in Chatham and Lord Howe the second
    pass never fired, and an HTTP trigger in it keyed a slot the scheduler never ran."""
    zone, change = ZoneInfo(tz), _clocks_go_back(tz)
    minutes = [change - timedelta(hours=4) + timedelta(minutes=m) for m in range(8 * 60)]
    for expr in WILDCARD_EXPRESSIONS:
        want = [u for u in minutes if croniter.match(expr, u.astimezone(zone).replace(tzinfo=None))]
        got = list(cron.fires(expr, tz, after=minutes[0] - timedelta(minutes=1), until=minutes[-1]))
        assert got == want, f"{expr!r} in {tz}: first difference " + _first_difference(got, want)
        for minute in (m for m in minutes if m >= want[0]):
            slot = max(w for w in want if w <= minute)
            assert keys.schedule_slot(expr, tz, minute) == slot, (expr, tz, minute)
        # The scheduler resumes from the last slot it handled (a restart, a failed dispatch).
        for after in minutes[120:-120:7]:
            resumed = list(cron.fires(expr, tz, after=after, until=after + timedelta(hours=2)))
            assert resumed == [w for w in want if after < w <= after + timedelta(hours=2)], (expr, tz, after)


def test_registry_jobs_fire_at_cron_minutes_in_their_own_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    combos = [(spec.cron, spec.tz) for spec in JOBS if spec.cron is not None and "* * * *" not in spec.cron]
    for expr, tz, fired, _ in periodiq_minutes(combos, monkeypatch):
        assert fired == cron_minutes(expr, tz), (expr, tz)


def test_periodiq_own_cron_parser_deviates_so_offload_does_not_use_it() -> None:
    """periodiq matches day-of-week 0 against isoweekday (Sunday is 7), and rejects month names."""
    sunday = pendulum.datetime(YEAR, 1, 5, 0, 0, tz="UTC")
    assert croniter.match("@weekly", sunday)
    assert not periodiq.cron("@weekly").validate(sunday)
    assert not periodiq.cron("0 0 * * sun").validate(sunday)
    with pytest.raises(ValueError):
        periodiq.cron("0 8 * jan mon")


_DST_DAYS = {
    (3, 9),
    (3, 10),
    (11, 2),
    (11, 3),
    (3, 30),
    (3, 31),
    (10, 26),
    (10, 27),
}


def _near_dst(at: datetime) -> bool:
    """On or the day before a DST change day (UTC dates around the US and EU changes)."""
    return (at.month, at.day) in _DST_DAYS or (at.month, at.day + 1) in _DST_DAYS


def _first_difference(got: list[datetime], want: list[datetime]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"#{i}: scheduler {a.isoformat()} vs cron {b.isoformat()}"
    return f"lengths {len(got)} vs {len(want)}"
