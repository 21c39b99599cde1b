"""The `appointment-reconcile` job: bring our appointments in line with the calendar provider's bookings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.model import Appointment, AppointmentStatus, Client, LeadStatus
from domain.params import configured, int_param
from domain.ports import Booking, CalendarProvider, UnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
DEFAULT_LOOKBACK_DAYS = 2
DEFAULT_LOOKAHEAD_DAYS = 30
#: A client reconciled less than this long ago waits for a later run.
DEFAULT_MIN_AGE_S = 300
#: How many unresolved mismatches the result lists (all are counted).
MAX_SAMPLES = 10

_FROM_PROVIDER = {
    "booked": AppointmentStatus.BOOKED,
    "cancelled": AppointmentStatus.CANCELLED,
    "completed": AppointmentStatus.COMPLETED,
    "no_show": AppointmentStatus.NO_SHOW,
}
_OPEN = (AppointmentStatus.BOOKED, AppointmentStatus.RESCHEDULED)


@dataclass
class ReconcileResult:
    clients: int = 0
    created: int = 0
    cancelled: int = 0
    rescheduled: int = 0
    updated: int = 0
    leads_booked: int = 0
    failed: int = 0
    mismatches: int = 0
    mismatch_samples: list[str] = field(default_factory=list)
    has_more: bool = False

    def mismatch(self, text: str) -> None:
        self.mismatches += 1
        if len(self.mismatch_samples) < MAX_SAMPLES:
            self.mismatch_samples.append(text)


def reconcile_appointments(
    uow: UnitOfWork,
    *,
    calendar: CalendarProvider,
    now: datetime,
    batch_size: int,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    lookahead_days: int = DEFAULT_LOOKAHEAD_DAYS,
    min_age_s: int = DEFAULT_MIN_AGE_S,
) -> ReconcileResult:
    """Match the provider's bookings in [now - lookback, now + lookahead) to appointments by booking id.

    Cancellations, reschedules (new times) and completed/no-show outcomes are applied; a booking we do
    not know is created when its email names one of the client's leads, whose status becomes
    meeting_booked. What cannot be resolved is reported: a booking for an unknown email, and an open
    appointment in the window that the provider no longer has.
    """
    result = ReconcileResult()
    clients = uow.clients.stalest(
        "reconcile", done_before=now - timedelta(seconds=min_age_s), limit=batch_size
    )
    uow.commit()
    start_at, end_at = now - timedelta(days=lookback_days), now + timedelta(days=lookahead_days)
    for client in clients:
        try:
            bookings = calendar.bookings(calendar_id=client.calendar_id, start_at=start_at, end_at=end_at)
        except TransientError as e:
            # The run ends, and the client goes to the back of the line: one calendar that keeps
            # failing cannot starve the others.
            logger.warning("Calendar of client %r unavailable (%s); stopping this run", client.id, e)
            uow.clients.touch("reconcile", client.id, at=now)
            uow.commit()
            result.has_more = True
            break
        except PermanentError as e:
            logger.error("Calendar of client %r refused: %s", client.id, e)
            uow.clients.touch("reconcile", client.id, at=now)
            uow.commit()
            result.failed += 1
            continue
        _reconcile_client(uow, client, bookings, result, now=now, start_at=start_at, end_at=end_at)
        uow.clients.touch("reconcile", client.id, at=now)
        uow.commit()
        result.clients += 1
    result.has_more = result.has_more or len(clients) == batch_size
    return result


def _reconcile_client(
    uow: UnitOfWork,
    client: Client,
    bookings: list[Booking],
    result: ReconcileResult,
    *,
    now: datetime,
    start_at: datetime,
    end_at: datetime,
) -> None:
    # A booking listed twice (pages that overlap) is one booking: the later listing stands.
    bookings = list({b.booking_id: b for b in bookings}.values())
    known = uow.appointments.by_booking_ids([b.booking_id for b in bookings])
    for booking in bookings:
        status = _FROM_PROVIDER.get(booking.status)
        if status is None:
            result.mismatch(f"booking {booking.booking_id}: unknown status {booking.status!r}")
            continue
        appointment = known.get(booking.booking_id)
        if appointment is None:
            _create(uow, client, booking, status, result, now=now)
        elif appointment.client_id != client.id:
            result.mismatch(f"booking {booking.booking_id}: belongs to another client's appointment")
        else:
            _apply(uow, appointment, booking, status, result)
    seen = {b.booking_id for b in bookings}
    for appointment in uow.appointments.open_in_window(client.id, start_at=start_at, end_at=end_at):
        if appointment.provider_booking_id not in seen:
            result.mismatch(
                f"appointment {appointment.id}: booking {appointment.provider_booking_id} missing"
            )
    uow.appointments.mark_reconciled([a.id for a in known.values() if a.client_id == client.id], at=now)


def _create(
    uow: UnitOfWork,
    client: Client,
    booking: Booking,
    status: AppointmentStatus,
    result: ReconcileResult,
    *,
    now: datetime,
) -> None:
    if status == AppointmentStatus.CANCELLED:
        return  # booked and cancelled while we were not looking: nothing to keep
    lead = uow.leads.find(client.id, booking.lead_email) if booking.lead_email else None
    if lead is None:
        result.mismatch(f"booking {booking.booking_id}: no lead {booking.lead_email!r}")
        return
    uow.appointments.add(
        client_id=client.id,
        lead_id=lead.id,
        provider_booking_id=booking.booking_id,
        start_at=booking.start_at,
        end_at=booking.end_at,
        status=status,
        at=now,
    )
    result.created += 1
    before, after = uow.leads.advance(lead.id, LeadStatus.MEETING_BOOKED)
    if after != before:
        result.leads_booked += 1


def _apply(
    uow: UnitOfWork,
    appointment: Appointment,
    booking: Booking,
    status: AppointmentStatus,
    result: ReconcileResult,
) -> None:
    moved = (appointment.start_at, appointment.end_at) != (booking.start_at, booking.end_at)
    if status == AppointmentStatus.BOOKED:
        if moved:
            status = AppointmentStatus.RESCHEDULED
        elif appointment.status in _OPEN:
            return
    if status == appointment.status and not moved:
        return
    uow.appointments.update(appointment.id, start_at=booking.start_at, end_at=booking.end_at, status=status)
    if status == AppointmentStatus.CANCELLED:
        result.cancelled += 1
    elif status == AppointmentStatus.RESCHEDULED:
        result.rescheduled += 1
    else:
        result.updated += 1


def run(ctx: JobContext) -> Mapping[str, Any]:
    result = reconcile_appointments(
        ctx.uow,
        calendar=configured(ctx.ports.calendar, "calendar provider"),
        now=ctx.now,
        batch_size=int_param(ctx.params, "batch_size", DEFAULT_BATCH_SIZE),
        lookback_days=int_param(ctx.params, "lookback_days", DEFAULT_LOOKBACK_DAYS, minimum=0),
        lookahead_days=int_param(ctx.params, "lookahead_days", DEFAULT_LOOKAHEAD_DAYS),
        min_age_s=int_param(ctx.params, "min_age_s", DEFAULT_MIN_AGE_S, minimum=0),
    )
    return asdict(result)
