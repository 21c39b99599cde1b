"""periodiq's process loop driving the Scheduler: periodiq sleeps and wakes, offload matches and dispatches.

periodiq's own cron parser deviates from standard cron (day of week 0 never matches Sunday, so
`@weekly` never fires; month names are rejected) and its actors publish directly. So each job
stands in for a periodic actor whose `periodic` option is matched by the Scheduler (croniter in the
job's zone), and sending it settles its slots through the dispatch API.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable
from datetime import datetime
from types import FrameType
from typing import Any

import pendulum
import periodiq

from domain.registry import JobSpec
from scheduling.scheduler import Scheduler

logger = logging.getLogger(__name__)


class CronMatch:
    """The `periodic` option periodiq reads from an actor, answered by the Scheduler."""

    def __init__(self, scheduler: Scheduler, spec: JobSpec) -> None:
        self.scheduler = scheduler
        self.spec = spec

    def validate(self, date: datetime) -> bool:
        return self.scheduler.is_due(self.spec, date)

    def next_valid_date(self, last: datetime) -> Any:
        return pendulum.instance(self.scheduler.next_wake(self.spec, last))

    def __str__(self) -> str:
        return f"{self.spec.cron} {self.spec.tz}"


class ScheduledJob:
    """A registry job in the shape periodiq expects of a periodic actor."""

    def __init__(self, scheduler: Scheduler, spec: JobSpec) -> None:
        self.spec = spec
        self.fn = spec.run
        self.actor_name = spec.actor_name
        self.queue_name = spec.queue
        self.options = {"periodic": CronMatch(scheduler, spec)}

    def __str__(self) -> str:
        return self.spec.name


class _Stop(Exception):
    """Raised by the stop signal handler to leave periodiq's blocking wait."""


class Loop(periodiq.Scheduler):  # type: ignore[misc]
    """periodiq's scheduler with a clean stop: SIGINT or SIGTERM ends it after the current tick."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(actors=[ScheduledJob(scheduler, spec) for spec in scheduler.jobs])
        self.scheduler = scheduler
        self.stopping = False
        self._waiting = False
        self._scheduling = False
        self._again = False

    def schedule(self) -> None:
        """periodiq's `schedule`, with its call to itself for a wake already due made a loop: a
        broker that stalls every publish (each one giving up after ~30 s, past the 15 s retry)
        made it recurse once per wake, until the stack overflowed after hours of it."""
        if self._scheduling:
            self._again = True
            return
        self._scheduling = True
        try:
            self._again = True
            while self._again and not self.stopping:
                self._again = False
                super().schedule()
        finally:
            self._scheduling = False

    def send_actors(self, actors: Iterable[ScheduledJob], now: datetime) -> None:
        for job in actors:
            self.scheduler.fire(job.spec, now)

    def loop(self) -> None:
        while not self.stopping:
            try:
                self._waiting = True
                go = self.alarm_q.get(block=True)
            except _Stop:
                break
            finally:
                self._waiting = False
            if not go or self.stopping:
                break
            self.schedule()

    def stop(self, signum: int, frame: FrameType | None) -> None:
        logger.info("Stopping on signal %d.", signum)
        self.stopping = True
        if self._waiting:
            raise _Stop


def run(scheduler: Scheduler) -> None:
    """Run until SIGINT or SIGTERM: settle due slots, then sleep until the next fire time."""
    loop = Loop(scheduler)
    if not loop.actors:
        logger.warning("No job has a cron expression; nothing to schedule.")
        return
    periodiq.print_periodic_actors(loop.actors)
    previous = {sig: signal.signal(sig, loop.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        loop.schedule()
        loop.loop()
    except _Stop:
        pass
    finally:
        signal.alarm(0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
