"""Ports: what the domain needs from the outside, as Protocols the store and adapters implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Literal, Protocol

from domain.model import (
    Appointment,
    AppointmentStatus,
    Campaign,
    Client,
    Direction,
    FollowupTask,
    Interval,
    Lead,
    LeadStatus,
    Message,
    SequenceStep,
)
from domain.model import (
    Sequence as FollowupSequence,
)


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

    def claim_next(self, *, now: datetime, lease_s: float) -> BackgroundJob | None:
        """Mark the next due row running (attempt + 1) until `now + lease_s` and return it; None if none.

        A row whose last allowed attempt never finished (its worker died) is marked failed on the way.
        """
        ...

    # Each mark holds only while the row is still running `attempt`: False if another drain took it
    # over (its lease ran out), and then the caller must not commit the row's work.
    def mark_done(self, job_id: int, *, attempt: int, now: datetime) -> bool: ...

    def mark_retry(self, job_id: int, *, attempt: int, run_at: datetime, error: str) -> bool: ...

    def mark_failed(self, job_id: int, *, attempt: int, now: datetime, error: str) -> bool: ...


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
    #: The correlation id of the request that delivered it (its drains carry it on).
    correlation_id: str | None


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
        finished: bool = False,
    ) -> None:
        """Set the event's status; `finished` also stamps `processed_at` with the time of this call.

        Stamped when marked, not when the job began: a drain marks an event only after it saw the
        lead's older events finished, so `processed_at` keeps each lead's order.
        """

    def due_for_redrive(
        self, *, statuses: frozenset[str], received_before: datetime, queued_before: datetime, limit: int
    ) -> list[StoredWebhookEvent]:
        """Events in `statuses`, received before `received_before`, never queued or queued before
        `queued_before`, oldest first."""
        ...

    def mark_queued(self, event_id: int, *, at: datetime | None) -> None: ...


#: What a re-drive did: published a drain, found one still in play, or could not publish.
Redrive = Literal["queued", "carried", "failed"]


class DrainQueue(Protocol):
    """Queues a stored webhook event's drain again (the composition root binds it to the dispatcher)."""

    def redrive(self, event_id: int, *, correlation_id: str | None) -> Redrive:
        """Publish a drain of `event_id` unless one is still in play (the event's first drain, or its
        latest re-drive, has not ended: a message carries it)."""


#: What a per-client job keeps a "last done" time for, so each run takes the clients waited on longest.
ClientCursor = Literal["availability", "reconcile"]


class Clients(Protocol):
    def add(
        self,
        *,
        workspace_id: str,
        name: str,
        time_zone: str,
        business_start: time,
        business_end: time,
        business_days: str = "12345",
        meeting_minutes: int = 30,
        calendar_id: str | None = None,
    ) -> Client: ...

    def get(self, client_id: int) -> Client: ...

    def by_workspace(self, workspace_id: str) -> Client | None: ...

    def stalest(self, cursor: ClientCursor, *, done_before: datetime, limit: int) -> list[Client]:
        """Up to `limit` clients whose `cursor` is at or before `done_before`, never-done, then oldest."""
        ...

    def touch(self, cursor: ClientCursor, client_id: int, *, at: datetime) -> None: ...


class Leads(Protocol):
    def get(self, lead_id: int) -> Lead: ...

    def find(self, client_id: int, email: str) -> Lead | None: ...

    def upsert(
        self,
        client_id: int,
        email: str,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        time_zone: str | None = None,
        platform_lead_id: str | None = None,
        campaign_id: int | None = None,
    ) -> Lead:
        """The lead with this email, created if missing; given fields overwrite, None leaves a field alone."""
        ...

    def advance(self, lead_id: int, target: LeadStatus) -> tuple[LeadStatus, LeadStatus]:
        """Move the lead toward `target` by `model.advance`, from its status as committed (another
        job may have moved it since this one read it); (status before, status after)."""
        ...

    def campaign(self, client_id: int, external_id: str) -> Campaign:
        """The campaign the sending platform calls `external_id`, created active if unknown."""
        ...

    def add_campaign(
        self, client_id: int, external_id: str, *, name: str, active: bool, sequence_id: int | None
    ) -> Campaign: ...

    def for_slot_push(self, *, checked_before: datetime, limit: int) -> list[Lead]:
        """Leads in active campaigns still worth offering a meeting, least recently checked first."""
        ...


class Messages(Protocol):
    def add(
        self,
        *,
        client_id: int,
        lead_id: int,
        direction: Direction,
        provider_message_id: str,
        thread_id: str | None,
        subject: str | None,
        at: datetime,
    ) -> bool:
        """Record a message once per provider message id; False when it was already recorded."""
        ...

    def awaiting_timing(self, *, limit: int) -> list[tuple[Message, Message]]:
        """(inbound, first later outbound in its thread) pairs whose timing is missing or out of date."""
        ...


class ResponseTimings(Protocol):
    def upsert(
        self, *, inbound: Message, outbound: Message, response_s: int, business_s: int, at: datetime
    ) -> None: ...


class Followups(Protocol):
    def add_sequence(self, client_id: int, name: str, steps: Sequence[SequenceStep]) -> FollowupSequence: ...

    def sequence(self, sequence_id: int) -> FollowupSequence: ...

    def sequence_for(self, lead: Lead) -> FollowupSequence | None:
        """The lead's campaign's sequence, else the client's first sequence; None when the client has none."""
        ...

    def has_tasks(self, lead_id: int) -> bool: ...

    def add_task(
        self,
        *,
        lead_id: int,
        sequence_id: int,
        step: int,
        anchor_at: datetime,
        due_at: datetime,
        thread_id: str | None,
    ) -> bool:
        """Schedule one step; False when the lead already has that step of that sequence."""
        ...

    def due(self, *, now: datetime, limit: int) -> list[FollowupTask]:
        """Pending tasks due at `now`, oldest first."""
        ...

    def mark_sent(self, task_id: int, *, provider_message_id: str, at: datetime) -> bool:
        """Pending -> sent; False (and no change) when the task is no longer pending."""
        ...

    def mark_failed(self, task_id: int, *, error: str, at: datetime) -> bool:
        """Pending -> failed; False (and no change) when the task is no longer pending (a reply
        cancelled it meanwhile)."""
        ...

    def record_error(self, task_id: int, *, error: str) -> None:
        """Count a failed attempt and keep the task pending for the next run; only while it is pending."""
        ...

    def cancel_pending(self, lead_id: int, *, at: datetime, reason: str) -> int: ...


class Availability(Protocol):
    def replace(self, client_id: int, slots: Sequence[Interval], *, at: datetime) -> bool:
        """Make `slots` the client's set in one transaction; False (no write) when it already is that set."""
        ...

    def upcoming(self, client_id: int, *, after: datetime, limit: int) -> list[Interval]: ...


class Appointments(Protocol):
    def by_booking_ids(self, booking_ids: Sequence[str]) -> dict[str, Appointment]: ...

    def open_in_window(self, client_id: int, *, start_at: datetime, end_at: datetime) -> list[Appointment]:
        """Booked or rescheduled appointments of the client starting in [start_at, end_at)."""
        ...

    def add(
        self,
        *,
        client_id: int,
        lead_id: int | None,
        provider_booking_id: str,
        start_at: datetime,
        end_at: datetime,
        status: AppointmentStatus,
        at: datetime,
    ) -> Appointment: ...

    def update(
        self, appointment_id: int, *, start_at: datetime, end_at: datetime, status: AppointmentStatus
    ) -> None: ...

    def mark_reconciled(self, appointment_ids: Sequence[int], *, at: datetime) -> None: ...


class SlotPushes(Protocol):
    def last(self, lead_id: int) -> Mapping[str, str] | None:
        """The variables last pushed for the lead, None if never."""
        ...

    def record(self, lead_id: int, *, variables: Mapping[str, str] | None, at: datetime) -> None:
        """The lead was checked at `at`; with `variables`, they were also pushed then."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories; `commit` makes the work so far durable."""

    @property
    def background_jobs(self) -> BackgroundJobs: ...

    @property
    def webhook_events(self) -> WebhookEvents: ...

    @property
    def clients(self) -> Clients: ...

    @property
    def leads(self) -> Leads: ...

    @property
    def messages(self) -> Messages: ...

    @property
    def response_timings(self) -> ResponseTimings: ...

    @property
    def followups(self) -> Followups: ...

    @property
    def availability(self) -> Availability: ...

    @property
    def appointments(self) -> Appointments: ...

    @property
    def slot_pushes(self) -> SlotPushes: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Requeue(Protocol):
    """Publishes again the runs that no message carries (the composition root binds the dispatcher)."""

    def requeue_stale(self, *, queued_before: datetime, limit: int) -> int:
        """Publish runs still `queued` since before `queued_before`, at most `limit`; returns how many."""
        ...


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


#: A background-job handler: does the database work of one row, inside the row's transaction (so no
#: network calls); raising TransientError retries it later, PermanentError fails it.
Handler = Callable[[UnitOfWork, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Booking:
    """A booking as the calendar provider sees it; `status` is booked, cancelled, completed or no_show."""

    booking_id: str
    lead_email: str | None
    start_at: datetime
    end_at: datetime
    status: str


class CalendarProvider(Protocol):
    """A client's calendar. Raises TransientError (retry later) or PermanentError (recorded, no retry)."""

    def busy(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Interval]: ...

    def bookings(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Booking]: ...


@dataclass(frozen=True)
class OutgoingEmail:
    """One email to send. The sender must send at most one email per `idempotency_key`."""

    idempotency_key: str
    workspace_id: str
    to_email: str
    subject: str
    body: str
    thread_id: str | None


class EmailSender(Protocol):
    def send(self, email: OutgoingEmail) -> str:
        """Send (or recognise as already sent) and return the provider's message id."""
        ...


class LeadVariables(Protocol):
    """The sending platform's custom variables of a lead (used in its email templates)."""

    def set(self, *, workspace_id: str, lead_ref: str, variables: Mapping[str, str]) -> None: ...


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
    #: re-publishes runs left `queued` without a message; None until the composition root binds it.
    requeue: Requeue | None = None
    ledger_retention_days: float = 30.0
    run_event_retention_days: float = 30.0

    #: The providers; None means "not chosen yet": the composition root fills in the configured ones.
    calendar: CalendarProvider | None = None
    email: EmailSender | None = None
    lead_variables: LeadVariables | None = None
