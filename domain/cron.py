"""Cron schedules in a job's own time zone, with cron's rules for daylight-saving changes.

croniter's forward iteration (`get_next`) matches the expression against wall-clock time. Where the
clock changes, `fires` applies the rules of Vixie cron (cronie, Debian's cron), which tell apart
jobs "at a particular time" (neither the minute nor the hour field starts with `*`; `@hourly`
does) from wildcard jobs:

- clocks go back: a particular-time job does not run again in the repeated hour (croniter fires
  it twice); a wildcard job runs on the new time, so in both passes of that hour (croniter
  revisits it only where the change falls on the hour: Chatham's and Lord Howe's do not);
- clocks go forward: a particular-time job whose time was skipped runs right after the change
  (croniter moves it there too); a wildcard job does not run for the skipped minutes.

croniter's backward iteration can disagree with its forward one across a fold, so the latest fire
at or before a time is found by walking forward.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def check(expr: str, tz: str) -> None:
    """Raise ValueError with one line when `expr` is not a five-field cron expression that fires (not
    `0 0 31 2 *`) or `tz` no zone."""
    fields = expr.split()
    if not fields or (len(fields) != 5 and not (len(fields) == 1 and fields[0].lower() in _ALIASES)):
        raise ValueError(f"invalid cron expression {expr!r}: expected five fields or an @alias")
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}")
    try:
        _iterator(expr, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"cron expression {expr!r} never fires (no such date)") from None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


@lru_cache(maxsize=256)
def _parsed(expr: str) -> croniter:
    return croniter(expr)


def _iterator(expr: str, start: datetime) -> croniter:
    """A croniter at `start`, copied from a cached parse (parsing costs more than iterating)."""
    it = copy.copy(_parsed(expr))
    it.set_current(start, force=True)
    return it


def _at_particular_time(expr: str) -> bool:
    """Whether cron's daylight-saving rules treat `expr` as a job at a particular time."""
    minute, hour = _parsed(expr).expressions[:2]
    return not minute.startswith("*") and not hour.startswith("*")


def fires(expr: str, tz: str, *, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
    """The fire times of `expr` in zone `tz` strictly after `after` (and at or before `until`), in UTC."""
    zone = ZoneInfo(tz)
    particular = _at_particular_time(expr)
    minutes, hours = _parsed(expr).expanded[:2]
    # Within a repeated span, the second-pass fires after `after` are queued by their first-pass
    # twins: start early enough to meet those (only fires after `after` are yielded).
    wall = after.astimezone(zone)
    repeated = wall.replace(fold=0).utcoffset() - wall.replace(fold=1).utcoffset()  # type: ignore[operator]
    it = _iterator(expr, (after - max(repeated, timedelta(0))).astimezone(zone))
    # A wildcard job's fires in the second pass of a repeated hour, due once the first pass is past:
    # croniter revisits the repeated wall times only where the change is on the hour.
    second_pass: list[datetime] = []
    last = after
    while True:
        at: datetime = it.get_next(datetime).astimezone(UTC)
        while second_pass and second_pass[0] <= min(at, until or at):
            due = heapq.heappop(second_pass)
            if due > last:
                last = due
                yield due
        if until is not None and at > until:
            return
        wall = at.astimezone(zone)
        if particular:
            if wall.fold and wall.utcoffset() != wall.replace(fold=0).utcoffset():
                continue  # the second pass of a repeated hour
        elif not (_has(minutes, wall.minute) and _has(hours, wall.hour)):
            continue  # croniter moved a minute the clock skipped to just after the change
        elif not wall.fold and wall.replace(fold=1).utcoffset() != wall.utcoffset():
            heapq.heappush(second_pass, wall.replace(fold=1).astimezone(UTC))
        if at > last:  # two skipped minutes of one job move to the same one
            last = at
            yield at


def _has(field: Sequence[object], value: int) -> bool:
    return field == ["*"] or value in field


def latest_fire(expr: str, tz: str, *, now: datetime) -> datetime:
    """The latest fire time at or before `now` (the schedule slot `now` belongs to), in UTC."""
    now = now.astimezone(UTC).replace(second=0, microsecond=0)
    # Step back with get_prev, then let the forward sequence decide: any fire it finds after the
    # anchor is the latest. Two steps cover get_prev erring by one fire across a fold or landing
    # in a gap; more are needed where `fires` skips the second pass of a repeated hour.
    back = _iterator(expr, now.astimezone(ZoneInfo(tz)) + timedelta(seconds=1))
    back.get_prev(datetime)
    for _ in range(_MAX_STEPS_BACK):
        anchor: datetime = back.get_prev(datetime).astimezone(UTC) - timedelta(minutes=1)
        latest = None
        for at in fires(expr, tz, after=anchor, until=now):
            latest = at
        if latest is not None:
            return latest
    raise ValueError(f"no fire time of {expr!r} in {tz} found at or before {now.isoformat()}")


#: More than the fires of a repeated hour (at most 60 a minute apart, more for a two-hour fold).
_MAX_STEPS_BACK = 200
