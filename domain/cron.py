"""Cron schedules in a job's own time zone, with croniter's semantics (DST gaps and folds included).

croniter's forward iteration (`get_next`) is the reference: a job fires at exactly those minutes. Its
backward iteration can disagree with it across a DST fold, so the latest fire at or before a time is
found by walking forward.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def check(expr: str, tz: str) -> None:
    """Raise ValueError with one line when `expr` is not a five-field cron expression or `tz` no zone."""
    fields = expr.split()
    if not fields or (len(fields) != 5 and not (len(fields) == 1 and fields[0].lower() in _ALIASES)):
        raise ValueError(f"invalid cron expression {expr!r}: expected five fields or an @alias")
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}")
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


def fires(expr: str, tz: str, *, after: datetime, until: datetime | None = None) -> Iterator[datetime]:
    """The fire times of `expr` in zone `tz` strictly after `after` (and at or before `until`), in UTC."""
    it = _iterator(expr, after.astimezone(ZoneInfo(tz)))
    while True:
        at: datetime = it.get_next(datetime).astimezone(UTC)
        if until is not None and at > until:
            return
        yield at


def latest_fire(expr: str, tz: str, *, now: datetime) -> datetime:
    """The latest fire time at or before `now` (the schedule slot `now` belongs to), in UTC."""
    now = now.astimezone(UTC).replace(second=0, microsecond=0)
    # Two steps back give a point safely before the latest fire even where get_prev errs by one
    # fire across a fold or lands in a gap; then the forward sequence decides.
    back = _iterator(expr, now.astimezone(ZoneInfo(tz)) + timedelta(seconds=1))
    back.get_prev(datetime)
    anchor: datetime = back.get_prev(datetime).astimezone(UTC) - timedelta(minutes=1)
    latest = None
    for at in fires(expr, tz, after=anchor, until=now):
        latest = at
    if latest is None:
        raise ValueError(f"no fire time of {expr!r} in {tz} found at or before {now.isoformat()}")
    return latest
