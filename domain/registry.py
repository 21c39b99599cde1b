"""The job registry: one declarative entry per job; actors, routes, schedules and listings derive from it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from croniter import croniter

from domain import (
    appointment_reconcile,
    availability,
    availability_slot,
    background_jobs,
    followups,
    response_timing,
)
from domain.context import JobFn
from domain.errors import UnknownJob

Overlap = Literal["defer", "skip"]
Missed = Literal["skip", "catch-up-latest", "catch-up-each"]


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One job.

    Parameters:
      name: the job's public name (routes, CLI, ledger).
      run: the domain function.
      actor_name: the Dramatiq actor, a verb phrase.
      cron, tz: five-field cron expression and IANA time zone; None for work that is only triggered.
      concurrency_cap: runs of this job at once, across all workers and hosts.
      overlap: what a run that finds the cap full does: wait (`defer`) or end `skipped`.
      max_retries, min_backoff_ms, max_backoff_ms: Dramatiq retries with exponential backoff.
      time_limit_ms: a run longer than this is interrupted; also bounds its dedup lease.
      max_wait_ms: the longest a message may wait for a free slot before it is dead-lettered.
      missed: what the scheduler does with slots that were not run when due.
    """

    name: str
    run: JobFn
    actor_name: str
    description: str
    cron: str | None = None
    tz: str = "UTC"
    concurrency_cap: int = 1
    overlap: Overlap = "defer"
    max_retries: int = 5
    min_backoff_ms: int = 15_000
    max_backoff_ms: int = 3_600_000
    time_limit_ms: int = 600_000
    max_wait_ms: int = 3_600_000
    missed: Missed = "skip"

    @property
    def queue(self) -> str:
        """The RabbitMQ queue, named to read well in the management UI."""
        return f"offload.{self.name}"

    def __post_init__(self) -> None:
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"job {self.name!r}: invalid cron expression {self.cron!r}")
        if self.concurrency_cap < 1:
            raise ValueError(f"job {self.name!r}: concurrency_cap must be >= 1")


class Registry:
    """An ordered, name-indexed set of jobs."""

    def __init__(self, specs: Iterable[JobSpec]) -> None:
        self._specs: dict[str, JobSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"job {spec.name!r} declared twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> JobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownJob(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._specs.values())

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def by_actor(self) -> Mapping[str, JobSpec]:
        return {spec.actor_name: spec for spec in self._specs.values()}

    def extended(self, specs: Iterable[JobSpec]) -> Registry:
        return Registry([*self._specs.values(), *specs])


JOBS = Registry(
    [
        JobSpec(
            name="background-jobs",
            run=background_jobs.drain,
            actor_name="drain_background_jobs",
            description="Claim due rows of background_jobs, run their handlers, retry with backoff.",
            cron="* * * * *",
            concurrency_cap=1,
            max_retries=3,
            time_limit_ms=300_000,
        ),
        JobSpec(
            name="response-timing",
            run=response_timing.run,
            actor_name="record_response_times",
            description="Record how long each inbound lead message waited for the first reply.",
            cron="*/10 * * * *",
            max_retries=3,
            time_limit_ms=300_000,
        ),
        JobSpec(
            name="appointment-reconcile",
            run=appointment_reconcile.run,
            actor_name="reconcile_appointments",
            description="Match calendar bookings to appointments: cancellations, reschedules, missing ones.",
            cron="*/15 * * * *",
            max_retries=3,
            time_limit_ms=300_000,
        ),
        JobSpec(
            name="followups",
            run=followups.run,
            actor_name="send_due_followups",
            description="Send due follow-up emails, advance sequences, stop them for leads who answered.",
            cron="*/5 * * * *",
            concurrency_cap=1,
            overlap="skip",
            max_retries=3,
            time_limit_ms=240_000,
        ),
        JobSpec(
            name="availability",
            run=availability.run,
            actor_name="refresh_availability",
            description="Recompute each client's free meeting slots for the next 14 days.",
            cron="*/30 * * * *",
            max_retries=3,
            time_limit_ms=300_000,
        ),
        JobSpec(
            name="emailbison-availability-slot",
            run=availability_slot.run,
            actor_name="push_availability_slots",
            description="Push each active-campaign lead's next two free slots to the sending platform.",
            cron="5,35 * * * *",
            max_retries=3,
            time_limit_ms=300_000,
        ),
    ]
)
