"""SqlUnitOfWork: one session over the repositories the domain's ports describe."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cached_property
from types import TracebackType
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from domain.ports import BackgroundJob
from store.db import translate_errors
from store.models import BackgroundJobRow
from store.repositories import (
    SqlAppointments,
    SqlAvailability,
    SqlClients,
    SqlFollowups,
    SqlLeads,
    SqlMessages,
    SqlResponseTimings,
    SqlSlotPushes,
)
from store.webhook_events import SqlWebhookEvents


class SqlBackgroundJobs:
    def __init__(self, session: Session) -> None:
        self._s = session

    def add(self, *, type: str, payload: Mapping[str, Any], run_at: datetime, max_attempts: int = 5) -> int:
        row = BackgroundJobRow(
            type=type,
            payload=dict(payload),
            status="pending",
            attempts=0,
            max_attempts=max_attempts,
            run_at=run_at,
            created_at=run_at,
        )
        self._s.add(row)
        self._s.flush()
        return row.id

    def claim_next(self, *, now: datetime, lease_s: float) -> BackgroundJob | None:
        due = (
            select(BackgroundJobRow)
            .where(
                or_(
                    (BackgroundJobRow.status == "pending") & (BackgroundJobRow.run_at <= now),
                    (BackgroundJobRow.status == "running") & (BackgroundJobRow.locked_until < now),
                )
            )
            .order_by(BackgroundJobRow.run_at, BackgroundJobRow.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        while (row := self._s.scalars(due).first()) is not None:
            if row.status == "running" and row.attempts >= row.max_attempts:
                # Its last attempt died with its worker (a handler that crashes the process): give up.
                row.status, row.finished_at, row.locked_until = "failed", now, None
                row.last_error = f"attempt {row.attempts} of {row.max_attempts} never finished"
                self._s.flush()
                continue
            row.status = "running"
            row.attempts += 1
            row.locked_until = now + timedelta(seconds=lease_s)
            return BackgroundJob(row.id, row.type, dict(row.payload), row.attempts, row.max_attempts)
        return None

    def mark_done(self, job_id: int, *, attempt: int, now: datetime) -> bool:
        return self._mark(job_id, attempt, status="done", finished_at=now)

    def mark_retry(self, job_id: int, *, attempt: int, run_at: datetime, error: str) -> bool:
        return self._mark(job_id, attempt, status="pending", run_at=run_at, last_error=error)

    def mark_failed(self, job_id: int, *, attempt: int, now: datetime, error: str) -> bool:
        return self._mark(job_id, attempt, status="failed", finished_at=now, last_error=error)

    def _mark(self, job_id: int, attempt: int, **values: Any) -> bool:
        row = self._s.get_one(BackgroundJobRow, job_id, populate_existing=True, with_for_update=True)
        if (row.status, row.attempts) != ("running", attempt):
            return False  # taken over: another drain runs (or ran) this row
        for name, value in {**values, "locked_until": None}.items():
            setattr(row, name, value)
        return True


class SqlUnitOfWork:
    """Use as a context manager; leaving it without `commit` rolls back. Store errors become StoreError.

    The session and the repositories are made on first use: a job that finds nothing to do costs
    no session (`begun` says whether anything was read or written).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None

    def __enter__(self) -> SqlUnitOfWork:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is None:
            return
        try:
            self._session.rollback()
        finally:
            self._session.close()

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._sessions()
        return self._session

    @property
    def begun(self) -> bool:
        """Whether this unit of work has a transaction: something was read or written."""
        return self._session is not None and self._session.in_transaction()

    def commit(self) -> None:
        if self._session is not None:
            with translate_errors():
                self._session.commit()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.rollback()

    @cached_property
    def background_jobs(self) -> SqlBackgroundJobs:
        return SqlBackgroundJobs(self.session)

    @cached_property
    def webhook_events(self) -> SqlWebhookEvents:
        return SqlWebhookEvents(self.session)

    @cached_property
    def clients(self) -> SqlClients:
        return SqlClients(self.session)

    @cached_property
    def leads(self) -> SqlLeads:
        return SqlLeads(self.session)

    @cached_property
    def messages(self) -> SqlMessages:
        return SqlMessages(self.session)

    @cached_property
    def response_timings(self) -> SqlResponseTimings:
        return SqlResponseTimings(self.session)

    @cached_property
    def followups(self) -> SqlFollowups:
        return SqlFollowups(self.session)

    @cached_property
    def availability(self) -> SqlAvailability:
        return SqlAvailability(self.session)

    @cached_property
    def appointments(self) -> SqlAppointments:
        return SqlAppointments(self.session)

    @cached_property
    def slot_pushes(self) -> SqlSlotPushes:
        return SqlSlotPushes(self.session)
