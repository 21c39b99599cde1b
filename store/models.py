"""SQLAlchemy 2 typed models. Alembic migrations create the tables; models only describe them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: What no store takes in text: NUL (PostgreSQL) and lone surrogates (UTF-8, in every driver).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class OutcomeText(TypeDecorator[str]):
    """Text the program writes about an outcome (errors, reasons), stored with NUL as U+FFFD.

    Error texts quote other systems' answers (bytes decoded with `surrogateescape` leave lone
    surrogates), and the stores refuse NUL or lone surrogates in text: without this, the write that
    records a failure would fail on the failure's own text. Each becomes U+FFFD.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return _UNSTORABLE.sub("\ufffd", value) if value else value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class Run(Base):
    """The status ledger: one row per dispatch key."""

    __tablename__ = "background_function_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(100))
    dispatch_key: Mapped[str] = mapped_column(String(300), unique=True)
    message_id: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str] = mapped_column(String(100))
    trigger: Mapped[str] = mapped_column(String(20))
    mode: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    slot: Mapped[datetime | None]
    params: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    deferrals: Mapped[int] = mapped_column(default=0)
    queued_at: Mapped[datetime]
    #: When the current attempt claimed the run: its `running` history row until the run leaves `running`
    #: other than by succeeding (see `SqlLedger.events`).
    claimed_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None]
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(OutcomeText)
    result: Mapped[dict[str, Any] | None]
    replay_of: Mapped[int | None] = mapped_column(ForeignKey("background_function_runs.id"))

    __table_args__ = (
        Index("ix_runs_job_queued_at", "job", "queued_at"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
    )


class RunEvent(Base):
    """The ledger's history: every status change of a run, in order (lost, then the next attempt).

    Except the current attempt's claim and success, which the run row itself records
    (`claimed_at`, `finished_at`): `SqlLedger.events` reads the two together.
    """

    __tablename__ = "background_function_run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("background_function_runs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None]
    detail: Mapped[str | None] = mapped_column(OutcomeText)

    __table_args__ = (Index("ix_run_events_run_id", "run_id", "id"),)


class ConcurrencyLease(Base):
    """One row per (job, slot number): a slot is free when it has no holder or its lease expired."""

    __tablename__ = "concurrency_leases"

    job: Mapped[str] = mapped_column(String(100), primary_key=True)
    slot_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(String(300))
    expires_at: Mapped[datetime | None]


class BackgroundJobRow(Base):
    __tablename__ = "background_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=5)
    run_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(OutcomeText)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_background_jobs_due", "status", "run_at"),)


class WebhookEvent(Base):
    """An incoming webhook, committed before the sender gets its 2xx; drained by a worker."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    provider_event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    lead_ref: Mapped[str | None] = mapped_column(String(320))
    headers: Mapped[dict[str, Any]]
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    status_reason: Mapped[str | None] = mapped_column(OutcomeText)
    attempts: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime]
    queued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("provider", "provider_event_id", name="uq_webhook_events_provider_event"),
        Index("ix_webhook_events_status_received", "status", "received_at"),
        Index("ix_webhook_events_lead", "lead_ref", "id"),
    )


# The domain: clients, leads and what the jobs and webhook handlers keep about them (migration 0003).


class ClientRow(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64))
    business_start: Mapped[time] = mapped_column(Time)
    business_end: Mapped[time] = mapped_column(Time)
    business_days: Mapped[str] = mapped_column(String(7))
    meeting_minutes: Mapped[int]
    calendar_id: Mapped[str] = mapped_column(String(200))
    availability_refreshed_at: Mapped[datetime | None]
    reconciled_at: Mapped[datetime | None]


class FollowupSequenceRow(Base):
    __tablename__ = "followup_sequences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    name: Mapped[str] = mapped_column(String(200))


class FollowupStepRow(Base):
    __tablename__ = "followup_steps"

    sequence_id: Mapped[int] = mapped_column(ForeignKey("followup_sequences.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    day_offset: Mapped[int]
    subject: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)


class CampaignRow(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean)
    sequence_id: Mapped[int | None] = mapped_column(ForeignKey("followup_sequences.id"))

    __table_args__ = (UniqueConstraint("client_id", "external_id", name="uq_campaigns_client_external"),)


class LeadRow(Base):
    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    time_zone: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    platform_lead_id: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        UniqueConstraint("client_id", "email", name="uq_leads_client_email"),
        Index("ix_leads_campaign", "campaign_id"),
    )


class MessageRow(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id"))
    direction: Mapped[str] = mapped_column(String(10))
    provider_message_id: Mapped[str] = mapped_column(String(300), unique=True)
    thread_id: Mapped[str | None] = mapped_column(String(300))
    subject: Mapped[str | None] = mapped_column(String(500))
    at: Mapped[datetime]

    __table_args__ = (Index("ix_messages_lead_thread_at", "lead_id", "thread_id", "at"),)


class ResponseTimingRow(Base):
    __tablename__ = "response_timings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inbound_message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    outbound_message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id"))
    response_s: Mapped[int]
    business_s: Mapped[int]
    computed_at: Mapped[datetime]


class FollowupTaskRow(Base):
    __tablename__ = "followup_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id"))
    sequence_id: Mapped[int] = mapped_column(ForeignKey("followup_sequences.id"))
    step: Mapped[int]
    anchor_at: Mapped[datetime]
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(default=0)
    thread_id: Mapped[str | None] = mapped_column(String(300))
    provider_message_id: Mapped[str | None] = mapped_column(String(300))
    last_error: Mapped[str | None] = mapped_column(OutcomeText)
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("lead_id", "sequence_id", "step", name="uq_followup_tasks_lead_step"),
        Index("ix_followup_tasks_due", "status", "due_at"),
    )


class AvailabilitySlotRow(Base):
    __tablename__ = "availability_slots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("client_id", "start_at", name="uq_availability_client_start"),)


class AppointmentRow(Base):
    __tablename__ = "appointments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"))
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"))
    provider_booking_id: Mapped[str] = mapped_column(String(200), unique=True)
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    last_reconciled_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_appointments_client_start", "client_id", "start_at"),)


class LeadSlotPushRow(Base):
    """The availability-slot variables last pushed to the sending platform for a lead."""

    __tablename__ = "lead_slot_pushes"

    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id"), primary_key=True)
    variables: Mapped[dict[str, Any] | None]
    pushed_at: Mapped[datetime | None]
    checked_at: Mapped[datetime]


# The local providers' own data: what a calendar service and a sending platform would hold.


class CalendarBusyRow(Base):
    __tablename__ = "calendar_busy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calendar_id: Mapped[str] = mapped_column(String(200))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    label: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (Index("ix_calendar_busy_calendar_start", "calendar_id", "start_at"),)


class CalendarBookingRow(Base):
    __tablename__ = "calendar_bookings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calendar_id: Mapped[str] = mapped_column(String(200))
    booking_id: Mapped[str] = mapped_column(String(200), unique=True)
    lead_email: Mapped[str | None] = mapped_column(String(320))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))

    __table_args__ = (Index("ix_calendar_bookings_calendar_start", "calendar_id", "start_at"),)


class SentEmailRow(Base):
    """The local sending platform's outbox: one row per idempotency key, so a retried send is not re-sent."""

    __tablename__ = "sent_emails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    provider_message_id: Mapped[str] = mapped_column(String(300), unique=True)
    workspace_id: Mapped[str] = mapped_column(String(200))
    to_email: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    thread_id: Mapped[str | None] = mapped_column(String(300))
    sent_at: Mapped[datetime]


class PlatformLeadVariableRow(Base):
    """The local sending platform's custom variables per lead."""

    __tablename__ = "platform_lead_variables"

    workspace_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    lead_ref: Mapped[str] = mapped_column(String(320), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]
