"""Local providers: a calendar and a sending platform whose data live in the database.

They stand in for the external services so the system runs end to end on one machine. Each call uses its
own transaction, as a remote service would: what it did stays done even if the caller's unit of work is
rolled back or its process is killed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from domain.errors import PermanentError, TransientError
from domain.model import Interval
from domain.ports import Booking, OutgoingEmail
from store.db import translate_errors
from store.errors import StoreError, StoreUnavailable
from store.ledger import utcnow
from store.models import CalendarBookingRow, CalendarBusyRow, PlatformLeadVariableRow, SentEmailRow

BOOKING_STATUSES = ("booked", "cancelled", "completed", "no_show")


@contextmanager
def _provider_call(sessions: sessionmaker[Session], what: str) -> Iterator[Session]:
    """A session whose store errors become the domain's provider errors (unreachable -> transient)."""
    try:
        with sessions() as s, translate_errors():
            yield s
    except StoreUnavailable as e:
        raise TransientError(f"local {what} unavailable: {e}") from e
    except StoreError as e:
        raise PermanentError(f"local {what} failed: {e}") from e


class LocalCalendar:
    """CalendarProvider over the `calendar_busy` and `calendar_bookings` tables; also their admin API."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def busy(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Interval]:
        with _provider_call(self._sessions, "calendar") as s:
            blocks = s.execute(
                select(CalendarBusyRow.start_at, CalendarBusyRow.end_at).where(
                    CalendarBusyRow.calendar_id == calendar_id,
                    CalendarBusyRow.start_at < end_at,
                    CalendarBusyRow.end_at > start_at,
                )
            ).all()
            booked = s.execute(
                select(CalendarBookingRow.start_at, CalendarBookingRow.end_at).where(
                    CalendarBookingRow.calendar_id == calendar_id,
                    CalendarBookingRow.status == "booked",
                    CalendarBookingRow.start_at < end_at,
                    CalendarBookingRow.end_at > start_at,
                )
            ).all()
        return sorted((Interval(a, b) for a, b in [*blocks, *booked]), key=lambda i: (i.start_at, i.end_at))

    def bookings(self, *, calendar_id: str, start_at: datetime, end_at: datetime) -> list[Booking]:
        with _provider_call(self._sessions, "calendar") as s:
            rows = s.scalars(
                select(CalendarBookingRow)
                .where(
                    CalendarBookingRow.calendar_id == calendar_id,
                    CalendarBookingRow.start_at >= start_at,
                    CalendarBookingRow.start_at < end_at,
                )
                .order_by(CalendarBookingRow.start_at, CalendarBookingRow.booking_id)
            ).all()
            return [Booking(r.booking_id, r.lead_email, r.start_at, r.end_at, r.status) for r in rows]

    def add_busy(self, calendar_id: str, interval: Interval, *, label: str | None = None) -> None:
        with _provider_call(self._sessions, "calendar") as s:
            s.add(
                CalendarBusyRow(
                    calendar_id=calendar_id, start_at=interval.start_at, end_at=interval.end_at, label=label
                )
            )
            s.commit()

    def put_booking(self, calendar_id: str, booking: Booking) -> None:
        """Create or change a booking (reschedule: new times; cancel: status `cancelled`)."""
        if booking.status not in BOOKING_STATUSES:
            raise ValueError(f"booking status must be one of {BOOKING_STATUSES}, got {booking.status!r}")
        with _provider_call(self._sessions, "calendar") as s:
            row = s.scalars(
                select(CalendarBookingRow).where(CalendarBookingRow.booking_id == booking.booking_id)
            ).first()
            if row is None:
                row = CalendarBookingRow(calendar_id=calendar_id, booking_id=booking.booking_id)
                s.add(row)
            row.lead_email = booking.lead_email
            row.start_at, row.end_at, row.status = booking.start_at, booking.end_at, booking.status
            s.commit()


def local_message_id(idempotency_key: str) -> str:
    """The local platform's message id for a key: derived from it, so a repeated send names the same mail."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@offload.local>"


class LocalEmailSender:
    """EmailSender that writes to the `sent_emails` outbox; a unique key makes a repeated send a no-op."""

    def __init__(self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def send(self, email: OutgoingEmail) -> str:
        with _provider_call(self._sessions, "email sender") as s:
            existing = self._existing(s, email.idempotency_key)
            if existing is not None:
                return existing
            message_id = local_message_id(email.idempotency_key)
            s.add(
                SentEmailRow(
                    idempotency_key=email.idempotency_key,
                    provider_message_id=message_id,
                    workspace_id=email.workspace_id,
                    to_email=email.to_email,
                    subject=email.subject,
                    body=email.body,
                    thread_id=email.thread_id,
                    sent_at=self._clock(),
                )
            )
            try:
                s.commit()
            except IntegrityError:
                # A concurrent send of the same key won the insert: that one is the email.
                s.rollback()
                won = self._existing(s, email.idempotency_key)
                if won is None:
                    raise
                return won
            return message_id

    @staticmethod
    def _existing(s: Session, key: str) -> str | None:
        return s.scalars(
            select(SentEmailRow.provider_message_id).where(SentEmailRow.idempotency_key == key)
        ).first()


class LocalLeadVariables:
    """LeadVariables over the `platform_lead_variables` table."""

    def __init__(self, sessions: sessionmaker[Session], *, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def set(self, *, workspace_id: str, lead_ref: str, variables: Mapping[str, str]) -> None:
        with _provider_call(self._sessions, "lead variables") as s:
            for name, value in variables.items():
                row = s.get(PlatformLeadVariableRow, (workspace_id, lead_ref, name))
                if row is None:
                    row = PlatformLeadVariableRow(workspace_id=workspace_id, lead_ref=lead_ref, name=name)
                    s.add(row)
                row.value, row.updated_at = value, self._clock()
            s.commit()

    def get(self, *, workspace_id: str, lead_ref: str) -> dict[str, str]:
        with _provider_call(self._sessions, "lead variables") as s:
            rows = s.scalars(
                select(PlatformLeadVariableRow).where(
                    PlatformLeadVariableRow.workspace_id == workspace_id,
                    PlatformLeadVariableRow.lead_ref == lead_ref,
                )
            ).all()
            return {r.name: r.value for r in rows}
