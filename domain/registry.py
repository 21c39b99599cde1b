"""The job registry: one declarative entry per job; actors, routes, schedules and listings derive from it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from domain import (
    appointment_reconcile,
    availability,
    availability_slot,
    background_jobs,
    cron,
    followups,
    housekeeping,
    response_timing,
    webhook_drain,
)
from domain.context import JobFn
from domain.errors import UnknownJob

Overlap = Literal["defer", "skip"]
Missed = Literal["skip", "catch-up-latest", "catch-up-each"]


#: RabbitMQ's `consumer_timeout`: a delivery left unacked longer closes its channel, and every
#: message the channel holds goes back to its queue.
CONSUMER_TIMEOUT_MS = 1_800_000


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One job.

    Parameters:
      name: the job's public name (routes, CLI, ledger).
      run: the domain function.
      actor_name: the Dramatiq actor, a verb phrase.
      cron, tz: five-field cron expression and IANA time zone; None for work that is only triggered
        (such a job cannot be given a schedule: its runs need the parameters a trigger passes).
      concurrency_cap: runs of this job at once, across all workers and hosts.
      overlap: what a run that finds the cap full does: wait (`defer`) or end `skipped`.
      max_retries, min_backoff_ms, max_backoff_ms: Dramatiq retries with exponential backoff.
      time_limit_ms: a run longer than this is interrupted; also bounds its dedup lease.
      max_wait_ms: the longest a message may wait for a free slot before it is dead-lettered.
      missed: what the scheduler does with slots that were not run when due: record them `missed`
        (`skip`), run the latest due slot once (`catch-up-latest`) or run each (`catch-up-each`).
      missed_window_ms: how far back the scheduler looks for slots it did not handle.
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
    missed_window_ms: int = 86_400_000

    @property
    def queue(self) -> str:
        """The RabbitMQ queue, named to read well in the management UI."""
        return f"offload.{self.name}"

    @property
    def longest_backoff_ms(self) -> int:
        """The longest a retry waits: dramatiq doubles `min_backoff_ms` per retry, up to `max_backoff_ms`."""
        return min(self.max_backoff_ms, self.min_backoff_ms << self.max_retries)

    def __post_init__(self) -> None:
        if self.cron is not None:
            try:
                cron.check(self.cron, self.tz)
            except ValueError as e:
                raise ValueError(f"job {self.name!r}: {e}") from None
        if self.concurrency_cap < 1:
            raise ValueError(f"job {self.name!r}: concurrency_cap must be >= 1")
        # A worker holds a message unacked while it runs, and a retry until it is due.
        for what, ms in (
            ("time_limit_ms", self.time_limit_ms),
            ("its longest retry backoff", self.longest_backoff_ms),
        ):
            if ms >= CONSUMER_TIMEOUT_MS:
                raise ValueError(
                    f"job {self.name!r}: {what} ({ms} ms) must stay below RabbitMQ's "
                    "30-minute consumer timeout"
                )


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

    def extended(self, specs: Iterable[JobSpec]) -> Registry:
        return Registry([*self._specs.values(), *specs])

    def rescheduled(self, crons: Mapping[str, str | None]) -> Registry:
        """A copy where the named jobs fire at the given cron expressions (None: never scheduled).

        Raises ValueError naming the job for an unknown job, an invalid expression, or a cron on a job
        that is only triggered (it has none of its own: its runs need what a trigger gives them).
        """
        for name, expr in crons.items():
            if name not in self._specs:
                raise ValueError(f"unknown job {name!r}; known: {', '.join(self._specs)}")
            if expr is not None and self._specs[name].cron is None:
                raise ValueError(f"job {name!r} is only triggered, never scheduled")
        return Registry(
            replace(spec, cron=crons[spec.name]) if spec.name in crons else spec
            for spec in self._specs.values()
        )


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
            name=webhook_drain.DRAIN_JOB,
            run=webhook_drain.drain_event,
            actor_name="drain_webhook_event",
            description="Process one stored webhook event with its type's handler, in order per lead.",
            concurrency_cap=8,
            max_retries=8,
            min_backoff_ms=1_000,
            max_backoff_ms=60_000,
            time_limit_ms=60_000,
        ),
        JobSpec(
            name="webhook-sweeper",
            run=webhook_drain.sweep,
            actor_name="sweep_webhook_events",
            description="Queue again the stored webhook events that no drain message carries.",
            cron="* * * * *",
            concurrency_cap=1,
            overlap="skip",
            max_retries=2,
            time_limit_ms=120_000,
        ),
        JobSpec(
            name="reap-leases",
            run=housekeeping.reap_expired_leases,
            actor_name="reap_expired_leases",
            description="Mark `running` runs whose lease expired (their worker died) as `lost`.",
            cron="* * * * *",
            overlap="skip",
            max_retries=0,
            time_limit_ms=60_000,
            max_wait_ms=60_000,
        ),
        JobSpec(
            name="requeue-stale",
            run=housekeeping.requeue_stale_runs,
            actor_name="requeue_stale_runs",
            description="Publish again runs waiting too long for a message (queued, deferred, retrying).",
            cron="*/5 * * * *",
            overlap="skip",
            max_retries=0,
            time_limit_ms=60_000,
            max_wait_ms=60_000,
        ),
        JobSpec(
            name="ledger-retention",
            run=housekeeping.purge_ledger,
            actor_name="purge_old_runs",
            description="Delete finished ledger rows and run events older than the retention days.",
            cron="17 * * * *",
            overlap="skip",
            max_retries=2,
            time_limit_ms=120_000,
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
