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


@dataclass(frozen=True)
class StoredWebhookEvent:
    """A row of webhook_events as the drain reads it; `body` is the raw JSON the sender signed."""

    id: int
    provider: str
    provider_event_id: str
    event_type: str
    lead_ref: str | None
    body: str
    status: str
    status_reason: str | None
    attempts: int
    received_at: datetime
    queued_at: datetime | None
    processed_at: datetime | None


class WebhookEvents(Protocol):
    def lock(self, event_id: int) -> StoredWebhookEvent | None:
        """The event, locked for this unit of work so no other drain processes it meanwhile."""
        ...

    def older_open(self, event: StoredWebhookEvent, *, statuses: frozenset[str]) -> int | None:
        """The id of the oldest earlier event of the same lead still in one of `statuses`, if any."""
        ...

    def mark(
        self,
        event_id: int,
        *,
        status: str,
        reason: str | None,
        attempts: int | None = None,
        processed_at: datetime | None = None,
    ) -> None: ...

    def due_for_redrive(
        self, *, statuses: frozenset[str], received_before: datetime, queued_before: datetime, limit: int
    ) -> list[StoredWebhookEvent]:
        """Events in `statuses`, received before `received_before`, never queued or queued before
        `queued_before`, oldest first."""
        ...

    def mark_queued(self, event_id: int, *, at: datetime | None) -> None: ...


class DrainQueue(Protocol):
    """Queues the drain of one stored webhook event (the composition root binds it to the dispatcher)."""

    def drain(self, event_id: int, *, key: str) -> bool:
        """Publish a drain of `event_id` under dispatch key `key`; False when it could not be published."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories; `commit` makes the work so far durable."""

    @property
    def background_jobs(self) -> BackgroundJobs: ...

    @property
    def webhook_events(self) -> WebhookEvents: ...

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
    #: re-queues stored webhook events (the sweeper); None until the composition root binds it.
    drain_queue: DrainQueue | None = None
    #: the ledger's upkeep (reaper, retention); the composition root supplies the store's.
    housekeeping: Housekeeping | None = None
    ledger_retention_days: float = 30.0
    run_event_retention_days: float = 30.0
