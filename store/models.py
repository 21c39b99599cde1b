"""SQLAlchemy 2 typed models. Alembic migrations create the tables; models only describe them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None]
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    replay_of: Mapped[int | None] = mapped_column(ForeignKey("background_function_runs.id"))

    __table_args__ = (
        Index("ix_runs_job_queued_at", "job", "queued_at"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
    )


class RunEvent(Base):
    """Every status change of a run, in order: the ledger's history (lost, then the next attempt)."""

    __tablename__ = "background_function_run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("background_function_runs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    attempt: Mapped[int]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None]
    detail: Mapped[str | None] = mapped_column(Text)

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
    last_error: Mapped[str | None] = mapped_column(Text)
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
    status_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime]
    queued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("provider", "provider_event_id", name="uq_webhook_events_provider_event"),
        Index("ix_webhook_events_status_received", "status", "received_at"),
        Index("ix_webhook_events_lead", "lead_ref", "id"),
    )
