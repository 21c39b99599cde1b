"""The business objects the jobs and webhook handlers work on, and the time arithmetic they share."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.errors import PermanentError


class LeadStatus(StrEnum):
    NEW = "new"
    CONTACTED = "contacted"
    REPLIED = "replied"
    INTERESTED = "interested"
    MEETING_BOOKED = "meeting_booked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class TaskStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CANCELLED = "cancelled"
    FAILED = "failed"


class AppointmentStatus(StrEnum):
    BOOKED = "booked"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"
    COMPLETED = "completed"
    NO_SHOW = "no_show"


#: Statuses that stop every outreach for good.
TERMINAL = frozenset({LeadStatus.BOUNCED, LeadStatus.UNSUBSCRIBED})
#: Statuses in which a lead still gets follow-ups.
FOLLOWUP_ELIGIBLE = frozenset({LeadStatus.NEW, LeadStatus.CONTACTED})
#: The longest subject a message keeps (an email's may be longer; the record keeps its start).
SUBJECT_CHARS = 500
_PROGRESS = [
    LeadStatus.NEW,
    LeadStatus.CONTACTED,
    LeadStatus.REPLIED,
    LeadStatus.INTERESTED,
    LeadStatus.MEETING_BOOKED,
]


def advance(current: LeadStatus, target: LeadStatus) -> LeadStatus:
    """The status after an event says `target`: never backwards, and bounced/unsubscribed are final.

    Events arrive out of order (a late EMAIL_SENT after LEAD_REPLIED must not turn a lead back into
    `contacted`), so status only moves forward along new -> contacted -> replied -> interested ->
    meeting_booked; bounced or unsubscribed override any of them, and only unsubscribed overrides bounced.
    """
    if current == LeadStatus.UNSUBSCRIBED:
        return current
    if current == LeadStatus.BOUNCED:
        return target if target == LeadStatus.UNSUBSCRIBED else current
    if target in TERMINAL:
        return target
    return max(current, target, key=_PROGRESS.index)


@dataclass(frozen=True)
class Client:
    """A customer workspace: its calendar and the hours in which meetings can be booked.

    `business_days` holds ISO weekday digits (1 = Monday), e.g. "12345".
    """

    id: int
    workspace_id: str
    name: str
    time_zone: str
    business_start: time
    business_end: time
    business_days: str
    meeting_minutes: int
    calendar_id: str

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.time_zone)

    @property
    def hours(self) -> BusinessHours:
        return BusinessHours(
            start=self.business_start, end=self.business_end, days=self.business_days, zone=self.zone
        )


@dataclass(frozen=True)
class Campaign:
    id: int
    client_id: int
    external_id: str
    name: str
    active: bool
    sequence_id: int | None


@dataclass(frozen=True)
class Lead:
    """`platform_lead_id` is the sending platform's id for the lead (what its lead-variables API takes)."""

    id: int
    client_id: int
    email: str
    first_name: str | None
    last_name: str | None
    time_zone: str | None
    status: LeadStatus
    campaign_id: int | None
    platform_lead_id: str | None

    @property
    def ref(self) -> str:
        """How the sending platform names this lead: its id there, else the email address."""
        return self.platform_lead_id or self.email


@dataclass(frozen=True)
class Message:
    id: int
    client_id: int
    lead_id: int
    direction: Direction
    provider_message_id: str
    thread_id: str | None
    subject: str | None
    at: datetime


@dataclass(frozen=True)
class SequenceStep:
    step: int
    day_offset: int
    subject: str
    body: str


@dataclass(frozen=True)
class Sequence:
    id: int
    client_id: int
    name: str
    steps: tuple[SequenceStep, ...]

    def step(self, number: int) -> SequenceStep | None:
        return next((s for s in self.steps if s.step == number), None)

    def after(self, number: int) -> SequenceStep | None:
        later = [s for s in self.steps if s.step > number]
        return min(later, key=lambda s: s.step) if later else None


@dataclass(frozen=True)
class FollowupTask:
    """One step of one lead's sequence; `anchor_at` is when the sequence started (offsets count from it)."""

    id: int
    lead_id: int
    sequence_id: int
    step: int
    anchor_at: datetime
    due_at: datetime
    status: TaskStatus
    attempts: int
    thread_id: str | None

    @property
    def idempotency_key(self) -> str:
        """The key the sender sees: the same for every attempt at this task, so it is sent at most once."""
        return f"followup-task:{self.id}:step:{self.step}"


@dataclass(frozen=True)
class Interval:
    """A half-open UTC interval [start_at, end_at)."""

    start_at: datetime
    end_at: datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start_at < other.end_at and other.start_at < self.end_at


@dataclass(frozen=True)
class Appointment:
    id: int
    client_id: int
    lead_id: int | None
    provider_booking_id: str
    start_at: datetime
    end_at: datetime
    status: AppointmentStatus


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; an unknown name is bad data, not a retryable fault."""
    try:
        return ZoneInfo(name)
    # OSError: a region's name is a directory of the zone database ("America"), or a name too long
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise PermanentError(f"unknown time zone {name[:100]!r}") from e


def is_zone(name: str | None) -> bool:
    if not name:
        return False
    try:
        zone(name)
    except PermanentError:
        return False
    return True


def lead_zone(lead: Lead, client: Client) -> ZoneInfo:
    """Where the lead lives: their own zone when known and valid, else the client's."""
    return ZoneInfo(lead.time_zone) if lead.time_zone and is_zone(lead.time_zone) else client.zone


def local_at(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `tz`.

    A wall time skipped by a DST jump (02:30 on a spring-forward day) lands after the gap, shifted by
    its length (03:30); a repeated one (01:30 on a fall-back day) means its first occurrence.
    """
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def add_local_days(at: datetime, days: int, tz: ZoneInfo) -> datetime:
    """`at` plus `days` calendar days at the same wall-clock time in `tz` (09:00 stays 09:00 across DST)."""
    local = at.astimezone(tz)
    return local_at(local.date() + timedelta(days=days), local.time().replace(tzinfo=None), tz)


@dataclass(frozen=True)
class BusinessHours:
    """Daily [start, end) wall-clock window in `zone` on the ISO weekdays in `days`."""

    start: time
    end: time
    days: str
    zone: ZoneInfo

    def windows(self, start_at: datetime, end_at: datetime) -> Iterator[Interval]:
        """The business windows (UTC) overlapping [start_at, end_at), clipped to it, in order."""
        day = start_at.astimezone(self.zone).date() - timedelta(days=1)
        last = end_at.astimezone(self.zone).date()
        while day <= last:
            if str(day.isoweekday()) in self.days:
                window = Interval(local_at(day, self.start, self.zone), local_at(day, self.end, self.zone))
                lo, hi = max(window.start_at, start_at), min(window.end_at, end_at)
                if lo < hi:
                    yield Interval(lo, hi)
            day += timedelta(days=1)

    def seconds_between(self, start_at: datetime, end_at: datetime) -> int:
        """Business seconds in [start_at, end_at): real elapsed time, so a DST jump inside a window counts."""
        if end_at <= start_at:
            return 0
        return int(sum((w.end_at - w.start_at).total_seconds() for w in self.windows(start_at, end_at)))


def free_slots(
    hours: BusinessHours,
    *,
    start_at: datetime,
    end_at: datetime,
    length: timedelta,
    busy: list[Interval],
) -> list[Interval]:
    """Meeting slots of `length` in business hours between `start_at` and `end_at`, clear of `busy`.

    Slots are laid out from the start of each business window, one after another, so they sit on the
    same wall-clock grid every day (09:00, 09:30, ...) whatever the zone's UTC offset that day. A slot
    that began before `start_at` or would end after `end_at` or after the window is left out.
    """
    slots: list[Interval] = []
    ordered = sorted(busy, key=lambda b: b.start_at)
    day = start_at.astimezone(hours.zone).date()
    last = end_at.astimezone(hours.zone).date()
    while day <= last:
        if str(day.isoweekday()) in hours.days:
            window_end = local_at(day, hours.end, hours.zone)
            cursor = local_at(day, hours.start, hours.zone)
            while cursor + length <= window_end:
                slot = Interval(cursor, cursor + length)
                if (
                    slot.start_at >= start_at
                    and slot.end_at <= end_at
                    and not any(b.overlaps(slot) for b in ordered)
                ):
                    slots.append(slot)
                cursor += length
        day += timedelta(days=1)
    return slots


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def format_slot(at: datetime, tz: ZoneInfo) -> str:
    """A slot's start as a lead reads it in their zone, e.g. `Tuesday, March 10 at 9:30 AM EDT`.

    Built by hand rather than with strftime so the text does not depend on the process locale.
    """
    local = at.astimezone(tz)
    hour12 = local.hour % 12 or 12
    half = "AM" if local.hour < 12 else "PM"
    return (
        f"{_WEEKDAYS[local.weekday()]}, {_MONTHS[local.month - 1]} {local.day} "
        f"at {hour12}:{local.minute:02d} {half} {local.tzname()}"
    )
