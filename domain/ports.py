"""Ports: what the domain needs from the outside, as Protocols the store and adapters implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class BackgroundJob:
    id: int
    type: str
    payload: Mapping[str, Any]
    attempts: int
    max_attempts: int


class BackgroundJobs(Protocol):
    def add(
        self, *, type: str, payload: Mapping[str, Any], run_at: datetime, max_attempts: int = 5
    ) -> int: ...

    def claim_due(self, *, now: datetime, limit: int, lease_s: float) -> list[BackgroundJob]:
        """Mark up to `limit` due rows running (attempt + 1) until `now + lease_s` and return them."""
        ...

    def mark_done(self, job_id: int, *, now: datetime) -> None: ...

    def mark_retry(self, job_id: int, *, run_at: datetime, error: str) -> None: ...

    def mark_failed(self, job_id: int, *, now: datetime, error: str) -> None: ...


class UnitOfWork(Protocol):
    """One transaction over the repositories; `commit` makes the work so far durable."""

    @property
    def background_jobs(self) -> BackgroundJobs: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Housekeeping(Protocol):
    """Upkeep of the ledger itself: the reaper and retention. Each call does at most `limit` rows."""

    def reap(self, *, limit: int) -> int:
        """Mark `running` runs whose lease expired as `lost`; returns how many."""
        ...

    def purge_runs(self, *, finished_before: datetime, limit: int) -> int:
        """Delete runs that ended before `finished_before`, with their events; returns how many runs."""
        ...

    def purge_run_events(self, *, before: datetime, limit: int) -> int:
        """Delete run events recorded before `before`; returns how many."""
        ...


#: A background-job handler: does the work of one row; raising TransientError retries it later.
Handler = Callable[[UnitOfWork, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Ports:
    """The adapters a job may call, chosen by the composition root."""

    background_handlers: Mapping[str, Handler] = field(default_factory=dict)
    #: event type -> handler; see domain.webhooks.WebhookHandler (typed loosely to avoid a cycle).
    webhook_handlers: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    #: the ledger's upkeep (reaper, retention); the composition root supplies the store's.
    housekeeping: Housekeeping | None = None
    ledger_retention_days: float = 30.0
    run_event_retention_days: float = 30.0
