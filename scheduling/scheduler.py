"""Scheduler: turns each job's cron expression into dispatches, one per slot, and settles missed slots.

It keeps no state that matters: which slots ran lives on the ledger, and the dispatch key makes a
second scheduler (or an HTTP cron caller) firing the same slot a duplicate rather than a second run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Literal, Protocol

from actors.dispatch import DispatchError
from domain import cron
from domain.registry import JobSpec, Registry
from domain.runs import Trigger
from store.errors import StoreError

logger = logging.getLogger(__name__)

Action = Literal["dispatched", "duplicate", "missed", "failed"]


class Dispatching(Protocol):
    """What the scheduler needs of actors.dispatch.Dispatcher."""

    def dispatch(self, job: str, *, trigger: str, slot: datetime | None = None) -> Any: ...

    def miss(self, job: str, *, slot: datetime, detail: str) -> Any: ...


class SlotHistory(Protocol):
    """What the scheduler needs of the ledger: where each job got to before this process started."""

    def latest_slots(self, *, jobs: Sequence[str]) -> Mapping[str, datetime]: ...


@dataclass(frozen=True)
class Fired:
    """What the scheduler did with one slot of one job."""

    job: str
    slot: datetime
    action: Action
    detail: str = ""


class Scheduler:
    """Fires every job of `registry` that has a cron expression, in the job's own time zone.

    At each tick a job's due slots are the fire times after the last slot it handled, up to now. The
    latest one, if no older than `grace_s`, is on time and dispatched. The others were missed (the
    scheduler was down or late) and follow the job's `missed` policy: `skip` records them `missed`,
    `catch-up-latest` runs the latest due slot and records the rest `missed`, `catch-up-each` runs
    them all. Only slots within the job's `missed_window_ms`, and at most `max_missed_slots` of them,
    are considered. A slot whose dispatch failed is tried again after `retry_s`.

    Parameters:
      registry: the jobs.
      dispatcher: the dispatch API every trigger uses.
      history: the ledger, read once per job to learn the last slot handled before this process.
      grace_s: how late a slot may be dispatched and still count as on time (seconds).
      max_missed_slots: the most slots of one job settled in one tick; older ones are only logged.
      retry_s: how soon a failed dispatch is tried again (seconds).
    """

    def __init__(
        self,
        *,
        registry: Registry,
        dispatcher: Dispatching,
        history: SlotHistory,
        grace_s: float = 60.0,
        max_missed_slots: int = 100,
        retry_s: float = 15.0,
    ) -> None:
        self.jobs = [spec for spec in registry if spec.cron is not None]
        self.dispatcher = dispatcher
        self.history = history
        self.grace = timedelta(seconds=grace_s)
        self.max_missed_slots = max_missed_slots
        self.retry = timedelta(seconds=retry_s)
        #: job -> the latest slot handled (dispatched, found a duplicate, or recorded missed).
        self._handled: dict[str, datetime] = {}
        #: job -> (its next fire time, the croniter iteration that continues after it).
        self._cursors: dict[str, tuple[datetime, Iterator[datetime]]] = {}

    def tick(self, now: datetime) -> list[Fired]:
        """Settle every job's due slots as of `now`."""
        return [fired for spec in self.jobs for fired in self.fire(spec, now)]

    def is_due(self, spec: JobSpec, now: datetime) -> bool:
        """Whether `spec` has a slot at or before `now` that this scheduler has not handled."""
        return self._upcoming(spec) <= _utc(now)

    def next_wake(self, spec: JobSpec, now: datetime) -> datetime:
        """When `spec` next needs the scheduler: its next fire time, or soon if a slot is still owed."""
        now = _utc(now)
        upcoming = self._upcoming(spec)
        return now + self.retry if upcoming <= now else upcoming

    def _upcoming(self, spec: JobSpec) -> datetime:
        """The job's first slot not yet handled, as far as known (the epoch before its first tick)."""
        cursor = self._cursors.get(spec.name)
        return cursor[0] if cursor is not None else _EPOCH

    def fire(self, spec: JobSpec, now: datetime) -> list[Fired]:
        """Settle the due slots of one job as of `now`, oldest first; stop at the first failure."""
        assert spec.cron is not None
        now = _utc(now)
        handled = self._start(spec, now)
        if handled is None:
            return []
        window_start = now - timedelta(milliseconds=spec.missed_window_ms)
        due: deque[datetime] = deque(maxlen=self.max_missed_slots + 1)
        total = 0
        slots = self._slots(spec, after=max(handled, window_start - timedelta(minutes=1)))
        for slot in slots:
            if slot > now:
                self._cursors[spec.name] = (slot, slots)
                break
            due.append(slot)
            total += 1
        if total > len(due):
            logger.warning(
                "Job %r: %d due slots before %s exceed the limit of %d; they are neither run nor recorded.",
                spec.name,
                total - len(due),
                due[0].isoformat(),
                len(due),
            )
        out: list[Fired] = []
        for slot, run in self._plan(spec, list(due), now):
            fired = self._settle(spec, slot, run=run, now=now)
            out.append(fired)
            if fired.action == "failed":
                self._cursors.pop(spec.name, None)
                return out
            self._handled[spec.name] = slot
        return out

    def _slots(self, spec: JobSpec, *, after: datetime) -> Iterator[datetime]:
        """Fire times after `after`, continuing the job's open croniter iteration when it starts there."""
        assert spec.cron is not None
        cursor = self._cursors.pop(spec.name, None)
        if cursor is not None and self._handled.get(spec.name) == after and cursor[0] > after:
            return chain([cursor[0]], cursor[1])
        return cron.fires(spec.cron, spec.tz, after=after)

    def _start(self, spec: JobSpec, now: datetime) -> datetime | None:
        """The last slot handled; on first use, the job's latest slot on the ledger."""
        handled = self._handled.get(spec.name)
        if handled is not None:
            return handled
        try:
            latest = self.history.latest_slots(jobs=[spec.name]).get(spec.name)
        except StoreError as e:
            logger.warning("Job %r: cannot read its last slot from the ledger (%s); retrying.", spec.name, e)
            return None
        # A job with no history starts fresh: only a slot within the grace is due. One whose last
        # slot is older than its missed-slot window settles the slots within the window (`fire`).
        handled = latest if latest is not None else now - self.grace
        self._handled[spec.name] = handled
        return handled

    def _plan(self, spec: JobSpec, due: list[datetime], now: datetime) -> list[tuple[datetime, bool]]:
        """(slot, run it?) for each due slot, by the job's missed-slot policy."""
        if not due:
            return []
        on_time = now - due[-1] <= self.grace
        if spec.missed == "catch-up-each":
            return [(slot, True) for slot in due]
        if spec.missed == "catch-up-latest" or on_time:
            return [(slot, slot == due[-1]) for slot in due]
        return [(slot, False) for slot in due]

    def _settle(self, spec: JobSpec, slot: datetime, *, run: bool, now: datetime) -> Fired:
        late_s = int((now - slot).total_seconds())
        try:
            if run:
                d = self.dispatcher.dispatch(spec.name, trigger=Trigger.SCHEDULE, slot=slot)
                action: Action = "duplicate" if d.duplicate else "dispatched"
                logger.info("Job %r slot %s: %s (%s)", spec.name, slot.isoformat(), action, d.status)
                return Fired(spec.name, slot, action, d.status)
            detail = f"slot not run: {late_s} s late when the scheduler saw it (policy {spec.missed})"
            self.dispatcher.miss(spec.name, slot=slot, detail=detail)
            return Fired(spec.name, slot, "missed", detail)
        except (DispatchError, StoreError) as e:
            logger.error("Job %r slot %s: %s; trying again shortly.", spec.name, slot.isoformat(), e)
            return Fired(spec.name, slot, "failed", str(e))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    """`value` as a plain UTC datetime (periodiq hands over pendulum instances)."""
    return datetime.fromtimestamp(value.timestamp(), UTC)
