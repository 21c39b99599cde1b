"""SQL repositories for the domain's ports: clients, leads, messages, follow-ups, slots, appointments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, time
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, aliased

from domain.errors import PermanentError
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
    TaskStatus,
    advance,
    zone,
)
from domain.model import Sequence as FollowupSequence
from domain.ports import ClientCursor
from store.models import (
    AppointmentRow,
    AvailabilitySlotRow,
    CampaignRow,
    ClientRow,
    FollowupSequenceRow,
    FollowupStepRow,
    FollowupTaskRow,
    LeadRow,
    LeadSlotPushRow,
    MessageRow,
    ResponseTimingRow,
)

#: Lead statuses worth offering meeting slots to.
_SLOT_STATUSES = (
    LeadStatus.NEW,
    LeadStatus.CONTACTED,
    LeadStatus.REPLIED,
    LeadStatus.INTERESTED,
)


def _client(row: ClientRow) -> Client:
    return Client(
        id=row.id,
        workspace_id=row.workspace_id,
        name=row.name,
        time_zone=row.time_zone,
        business_start=row.business_start,
        business_end=row.business_end,
        business_days=row.business_days,
        meeting_minutes=row.meeting_minutes,
        calendar_id=row.calendar_id,
    )


def _lead(row: LeadRow) -> Lead:
    return Lead(
        id=row.id,
        client_id=row.client_id,
        email=row.email,
        first_name=row.first_name,
        last_name=row.last_name,
        time_zone=row.time_zone,
        status=LeadStatus(row.status),
        campaign_id=row.campaign_id,
        platform_lead_id=row.platform_lead_id,
    )


def _campaign(row: CampaignRow) -> Campaign:
    return Campaign(row.id, row.client_id, row.external_id, row.name, row.active, row.sequence_id)


def _message(row: MessageRow) -> Message:
    return Message(
        id=row.id,
        client_id=row.client_id,
        lead_id=row.lead_id,
        direction=Direction(row.direction),
        provider_message_id=row.provider_message_id,
        thread_id=row.thread_id,
        subject=row.subject,
        at=row.at,
    )


def _task(row: FollowupTaskRow) -> FollowupTask:
    return FollowupTask(
        id=row.id,
        lead_id=row.lead_id,
        sequence_id=row.sequence_id,
        step=row.step,
        anchor_at=row.anchor_at,
        due_at=row.due_at,
        status=TaskStatus(row.status),
        attempts=row.attempts,
        thread_id=row.thread_id,
    )


def _appointment(row: AppointmentRow) -> Appointment:
    return Appointment(
        id=row.id,
        client_id=row.client_id,
        lead_id=row.lead_id,
        provider_booking_id=row.provider_booking_id,
        start_at=row.start_at,
        end_at=row.end_at,
        status=AppointmentStatus(row.status),
    )


class SqlClients:
    def __init__(self, session: Session) -> None:
        self._s = session

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
    ) -> Client:
        zone(time_zone)
        if not business_days or not set(business_days) <= set("1234567"):
            raise PermanentError(f"business_days must be ISO weekday digits 1-7, got {business_days!r}")
        if business_start >= business_end or meeting_minutes < 1:
            raise PermanentError("business hours must start before they end, and meetings last >= 1 minute")
        row = ClientRow(
            workspace_id=workspace_id,
            name=name,
            time_zone=time_zone,
            business_start=business_start,
            business_end=business_end,
            business_days=business_days,
            meeting_minutes=meeting_minutes,
            calendar_id=calendar_id or workspace_id,
        )
        self._s.add(row)
        self._s.flush()
        return _client(row)

    def get(self, client_id: int) -> Client:
        return _client(self._s.get_one(ClientRow, client_id))

    def by_workspace(self, workspace_id: str) -> Client | None:
        row = self._s.scalars(select(ClientRow).where(ClientRow.workspace_id == workspace_id)).first()
        return _client(row) if row else None

    def stalest(self, cursor: ClientCursor, *, done_before: datetime, limit: int) -> list[Client]:
        column = _cursor_column(cursor)
        rows = self._s.scalars(
            select(ClientRow)
            .where(or_(column.is_(None), column <= done_before))
            .order_by(column.nulls_first(), ClientRow.id)
            .limit(limit)
        ).all()
        return [_client(r) for r in rows]

    def touch(self, cursor: ClientCursor, client_id: int, *, at: datetime) -> None:
        self._s.execute(
            update(ClientRow).where(ClientRow.id == client_id).values({_cursor_column(cursor): at})
        )


def _cursor_column(cursor: ClientCursor) -> Any:
    return {"availability": ClientRow.availability_refreshed_at, "reconcile": ClientRow.reconciled_at}[cursor]


class SqlLeads:
    def __init__(self, session: Session) -> None:
        self._s = session

    def get(self, lead_id: int) -> Lead:
        return _lead(self._s.get_one(LeadRow, lead_id))

    def find(self, client_id: int, email: str) -> Lead | None:
        row = self._row(client_id, email)
        return _lead(row) if row else None

    def _row(self, client_id: int, email: str) -> LeadRow | None:
        return self._s.scalars(
            select(LeadRow).where(LeadRow.client_id == client_id, LeadRow.email == email.lower())
        ).first()

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
        row = self._row(client_id, email)
        if row is None:
            row = LeadRow(client_id=client_id, email=email.lower(), status=LeadStatus.NEW)
            self._s.add(row)
        given = {
            "first_name": first_name,
            "last_name": last_name,
            "time_zone": time_zone,
            "platform_lead_id": platform_lead_id,
            "campaign_id": campaign_id,
        }
        for name, value in given.items():
            if value is not None and getattr(row, name) != value:
                setattr(row, name, value)
        self._s.flush()
        return _lead(row)

    def advance(self, lead_id: int, target: LeadStatus) -> tuple[LeadStatus, LeadStatus]:
        # From the status as committed, the row locked: another job may have moved it since this
        # one read the lead (FOR NO KEY UPDATE: the lock inserts referencing the lead take is shared).
        current = LeadStatus(
            self._s.scalars(
                select(LeadRow.status).where(LeadRow.id == lead_id).with_for_update(key_share=True)
            ).one()
        )
        status = advance(current, target)
        if status != current:
            self._s.execute(update(LeadRow).where(LeadRow.id == lead_id).values(status=status))
        return current, status

    def campaign(self, client_id: int, external_id: str) -> Campaign:
        row = self._s.scalars(
            select(CampaignRow).where(
                CampaignRow.client_id == client_id, CampaignRow.external_id == external_id
            )
        ).first()
        if row is not None:
            return _campaign(row)
        return self.add_campaign(client_id, external_id, name=external_id, active=True, sequence_id=None)

    def add_campaign(
        self, client_id: int, external_id: str, *, name: str, active: bool, sequence_id: int | None
    ) -> Campaign:
        row = CampaignRow(
            client_id=client_id, external_id=external_id, name=name, active=active, sequence_id=sequence_id
        )
        self._s.add(row)
        self._s.flush()
        return _campaign(row)

    def for_slot_push(self, *, checked_before: datetime, limit: int) -> list[Lead]:
        rows = self._s.scalars(
            select(LeadRow)
            .join(CampaignRow, CampaignRow.id == LeadRow.campaign_id)
            .outerjoin(LeadSlotPushRow, LeadSlotPushRow.lead_id == LeadRow.id)
            .where(
                CampaignRow.active.is_(True),
                LeadRow.status.in_(_SLOT_STATUSES),
                or_(LeadSlotPushRow.checked_at.is_(None), LeadSlotPushRow.checked_at <= checked_before),
            )
            .order_by(LeadSlotPushRow.checked_at.nulls_first(), LeadRow.id)
            .limit(limit)
        ).all()
        return [_lead(r) for r in rows]


class SqlMessages:
    def __init__(self, session: Session) -> None:
        self._s = session

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
        existing = self._s.scalars(
            select(MessageRow.id).where(MessageRow.provider_message_id == provider_message_id)
        ).first()
        if existing is not None:
            return False
        self._s.add(
            MessageRow(
                client_id=client_id,
                lead_id=lead_id,
                direction=direction,
                provider_message_id=provider_message_id,
                thread_id=thread_id,
                subject=subject,
                at=at,
            )
        )
        self._s.flush()
        return True

    def awaiting_timing(self, *, limit: int) -> list[tuple[Message, Message]]:
        inbound, outbound = aliased(MessageRow), aliased(MessageRow)
        first_reply = (
            select(outbound.id)
            .where(
                outbound.lead_id == inbound.lead_id,
                outbound.direction == Direction.OUTBOUND,
                outbound.at > inbound.at,
                or_(inbound.thread_id.is_(None), outbound.thread_id == inbound.thread_id),
            )
            .order_by(outbound.at, outbound.id)
            .limit(1)
            .correlate(inbound)
            .scalar_subquery()
        )
        pairs = self._s.execute(
            select(inbound, first_reply)
            .outerjoin(ResponseTimingRow, ResponseTimingRow.inbound_message_id == inbound.id)
            .where(
                inbound.direction == Direction.INBOUND,
                first_reply.is_not(None),
                or_(ResponseTimingRow.id.is_(None), ResponseTimingRow.outbound_message_id != first_reply),
            )
            .order_by(inbound.at, inbound.id)
            .limit(limit)
        ).all()
        replies = {
            r.id: r
            for r in self._s.scalars(select(MessageRow).where(MessageRow.id.in_([p[1] for p in pairs])))
        }
        return [(_message(p[0]), _message(replies[p[1]])) for p in pairs]


class SqlResponseTimings:
    def __init__(self, session: Session) -> None:
        self._s = session

    def upsert(
        self, *, inbound: Message, outbound: Message, response_s: int, business_s: int, at: datetime
    ) -> None:
        row = self._s.scalars(
            select(ResponseTimingRow).where(ResponseTimingRow.inbound_message_id == inbound.id)
        ).first()
        if row is None:
            row = ResponseTimingRow(inbound_message_id=inbound.id, client_id=inbound.client_id)
            self._s.add(row)
        row.outbound_message_id = outbound.id
        row.lead_id = inbound.lead_id
        row.response_s = response_s
        row.business_s = business_s
        row.computed_at = at
        self._s.flush()


class SqlFollowups:
    def __init__(self, session: Session) -> None:
        self._s = session

    def add_sequence(self, client_id: int, name: str, steps: Sequence[SequenceStep]) -> FollowupSequence:
        row = FollowupSequenceRow(client_id=client_id, name=name)
        self._s.add(row)
        self._s.flush()
        for s in steps:
            self._s.add(
                FollowupStepRow(
                    sequence_id=row.id, step=s.step, day_offset=s.day_offset, subject=s.subject, body=s.body
                )
            )
        self._s.flush()
        return self.sequence(row.id)

    def sequence(self, sequence_id: int) -> FollowupSequence:
        row = self._s.get_one(FollowupSequenceRow, sequence_id)
        steps = self._s.scalars(
            select(FollowupStepRow)
            .where(FollowupStepRow.sequence_id == row.id)
            .order_by(FollowupStepRow.step)
        ).all()
        return FollowupSequence(
            id=row.id,
            client_id=row.client_id,
            name=row.name,
            steps=tuple(SequenceStep(s.step, s.day_offset, s.subject, s.body) for s in steps),
        )

    def sequence_for(self, lead: Lead) -> FollowupSequence | None:
        if lead.campaign_id is not None:
            sequence_id = self._s.scalars(
                select(CampaignRow.sequence_id).where(CampaignRow.id == lead.campaign_id)
            ).first()
            if sequence_id is not None:
                return self.sequence(sequence_id)
        first = self._s.scalars(
            select(FollowupSequenceRow.id)
            .where(FollowupSequenceRow.client_id == lead.client_id)
            .order_by(FollowupSequenceRow.id)
            .limit(1)
        ).first()
        return self.sequence(first) if first is not None else None

    def has_tasks(self, lead_id: int) -> bool:
        return (
            self._s.scalars(
                select(FollowupTaskRow.id).where(FollowupTaskRow.lead_id == lead_id).limit(1)
            ).first()
            is not None
        )

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
        exists = self._s.scalars(
            select(FollowupTaskRow.id).where(
                FollowupTaskRow.lead_id == lead_id,
                FollowupTaskRow.sequence_id == sequence_id,
                FollowupTaskRow.step == step,
            )
        ).first()
        if exists is not None:
            return False
        self._s.add(
            FollowupTaskRow(
                lead_id=lead_id,
                sequence_id=sequence_id,
                step=step,
                anchor_at=anchor_at,
                due_at=due_at,
                status=TaskStatus.PENDING,
                attempts=0,
                thread_id=thread_id,
            )
        )
        self._s.flush()
        return True

    def due(self, *, now: datetime, limit: int) -> list[FollowupTask]:
        rows = self._s.scalars(
            select(FollowupTaskRow)
            .where(FollowupTaskRow.status == TaskStatus.PENDING, FollowupTaskRow.due_at <= now)
            .order_by(FollowupTaskRow.due_at, FollowupTaskRow.id)
            .limit(limit)
        ).all()
        return [_task(r) for r in rows]

    def mark_sent(self, task_id: int, *, provider_message_id: str, at: datetime) -> bool:
        return self._if_pending(
            task_id, status=TaskStatus.SENT, provider_message_id=provider_message_id, finished_at=at
        )

    def mark_failed(self, task_id: int, *, error: str, at: datetime) -> bool:
        return self._if_pending(task_id, status=TaskStatus.FAILED, last_error=error, finished_at=at)

    def record_error(self, task_id: int, *, error: str) -> None:
        self._if_pending(task_id, last_error=error)

    def _if_pending(self, task_id: int, **values: Any) -> bool:
        # In one statement against the row as committed: a reply may have cancelled the task while
        # its send was in flight, and the session's copy of the row does not show it.
        result = self._s.execute(
            update(FollowupTaskRow)
            .where(FollowupTaskRow.id == task_id, FollowupTaskRow.status == TaskStatus.PENDING)
            .values(attempts=FollowupTaskRow.attempts + 1, **values)
            .execution_options(synchronize_session="fetch")
        )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    def cancel_pending(self, lead_id: int, *, at: datetime, reason: str) -> int:
        result = self._s.execute(
            update(FollowupTaskRow)
            .where(FollowupTaskRow.lead_id == lead_id, FollowupTaskRow.status == TaskStatus.PENDING)
            .values(status=TaskStatus.CANCELLED, finished_at=at, last_error=reason)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


class SqlAvailability:
    def __init__(self, session: Session) -> None:
        self._s = session

    def replace(self, client_id: int, slots: Sequence[Interval], *, at: datetime) -> bool:
        current = [
            Interval(r.start_at, r.end_at)
            for r in self._s.scalars(
                select(AvailabilitySlotRow)
                .where(AvailabilitySlotRow.client_id == client_id)
                .order_by(AvailabilitySlotRow.start_at)
            )
        ]
        wanted = sorted(slots, key=lambda s: s.start_at)
        if current == wanted:
            return False
        # One transaction (the caller's): readers see the old set or the new one, never a mix.
        self._s.execute(delete(AvailabilitySlotRow).where(AvailabilitySlotRow.client_id == client_id))
        self._s.add_all(
            AvailabilitySlotRow(client_id=client_id, start_at=s.start_at, end_at=s.end_at) for s in wanted
        )
        self._s.flush()
        return True

    def upcoming(self, client_id: int, *, after: datetime, limit: int) -> list[Interval]:
        rows = self._s.scalars(
            select(AvailabilitySlotRow)
            .where(AvailabilitySlotRow.client_id == client_id, AvailabilitySlotRow.start_at >= after)
            .order_by(AvailabilitySlotRow.start_at)
            .limit(limit)
        ).all()
        return [Interval(r.start_at, r.end_at) for r in rows]


class SqlAppointments:
    def __init__(self, session: Session) -> None:
        self._s = session

    def by_booking_ids(self, booking_ids: Sequence[str]) -> dict[str, Appointment]:
        if not booking_ids:
            return {}
        rows = self._s.scalars(
            select(AppointmentRow).where(AppointmentRow.provider_booking_id.in_(list(booking_ids)))
        ).all()
        return {r.provider_booking_id: _appointment(r) for r in rows}

    def open_in_window(self, client_id: int, *, start_at: datetime, end_at: datetime) -> list[Appointment]:
        rows = self._s.scalars(
            select(AppointmentRow)
            .where(
                AppointmentRow.client_id == client_id,
                AppointmentRow.status.in_([AppointmentStatus.BOOKED, AppointmentStatus.RESCHEDULED]),
                and_(AppointmentRow.start_at >= start_at, AppointmentRow.start_at < end_at),
            )
            .order_by(AppointmentRow.start_at, AppointmentRow.id)
        ).all()
        return [_appointment(r) for r in rows]

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
    ) -> Appointment:
        row = AppointmentRow(
            client_id=client_id,
            lead_id=lead_id,
            provider_booking_id=provider_booking_id,
            start_at=start_at,
            end_at=end_at,
            status=status,
            created_at=at,
            last_reconciled_at=at,
        )
        self._s.add(row)
        self._s.flush()
        return _appointment(row)

    def update(
        self, appointment_id: int, *, start_at: datetime, end_at: datetime, status: AppointmentStatus
    ) -> None:
        row = self._s.get_one(AppointmentRow, appointment_id)
        row.start_at, row.end_at, row.status = start_at, end_at, status
        self._s.flush()

    def mark_reconciled(self, appointment_ids: Sequence[int], *, at: datetime) -> None:
        if appointment_ids:
            self._s.execute(
                update(AppointmentRow)
                .where(AppointmentRow.id.in_(list(appointment_ids)))
                .values(last_reconciled_at=at)
            )


class SqlSlotPushes:
    def __init__(self, session: Session) -> None:
        self._s = session

    def last(self, lead_id: int) -> Mapping[str, str] | None:
        row = self._s.get(LeadSlotPushRow, lead_id)
        return dict(row.variables) if row is not None and row.variables is not None else None

    def record(self, lead_id: int, *, variables: Mapping[str, str] | None, at: datetime) -> None:
        row = self._s.get(LeadSlotPushRow, lead_id)
        if row is None:
            row = LeadSlotPushRow(lead_id=lead_id)
            self._s.add(row)
        row.checked_at = at
        if variables is not None:
            row.variables, row.pushed_at = dict(variables), at
        self._s.flush()
