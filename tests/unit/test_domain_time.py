"""The domain's time arithmetic and status rules, on fixed instants, including DST edges."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from domain.errors import PermanentError
from domain.followups import render
from domain.model import (
    BusinessHours,
    Interval,
    Lead,
    LeadStatus,
    add_local_days,
    advance,
    format_slot,
    free_slots,
    local_at,
    zone,
)
from domain.params import int_param

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def hours(tz: ZoneInfo, start: int = 9, end: int = 17, days: str = "12345") -> BusinessHours:
    return BusinessHours(start=time(start), end=time(end), days=days, zone=tz)


# --- lead status ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "expected"),
    [
        (LeadStatus.NEW, LeadStatus.CONTACTED, LeadStatus.CONTACTED),
        (LeadStatus.REPLIED, LeadStatus.CONTACTED, LeadStatus.REPLIED),  # late EMAIL_SENT
        (LeadStatus.MEETING_BOOKED, LeadStatus.REPLIED, LeadStatus.MEETING_BOOKED),
        (LeadStatus.REPLIED, LeadStatus.BOUNCED, LeadStatus.BOUNCED),
        (LeadStatus.BOUNCED, LeadStatus.CONTACTED, LeadStatus.BOUNCED),
        (LeadStatus.BOUNCED, LeadStatus.UNSUBSCRIBED, LeadStatus.UNSUBSCRIBED),
        (LeadStatus.UNSUBSCRIBED, LeadStatus.BOUNCED, LeadStatus.UNSUBSCRIBED),
        (LeadStatus.UNSUBSCRIBED, LeadStatus.MEETING_BOOKED, LeadStatus.UNSUBSCRIBED),
    ],
)
def test_status_moves_forward_only_and_stops_at_bounced_or_unsubscribed(
    current: LeadStatus, target: LeadStatus, expected: LeadStatus
) -> None:
    assert advance(current, target) == expected


# --- wall-clock arithmetic -----------------------------------------------------------------------


def test_skipped_wall_time_lands_after_the_spring_forward_gap() -> None:
    # 2026-03-08 02:30 does not exist in New York: clocks jump from 02:00 EST to 03:00 EDT.
    assert local_at(date(2026, 3, 8), time(2, 30), NY) == utc(2026, 3, 8, 7, 30)  # 03:30 EDT


def test_repeated_wall_time_means_its_first_occurrence() -> None:
    # 2026-11-01 01:30 happens twice in New York; the first is EDT (UTC-4).
    assert local_at(date(2026, 11, 1), time(1, 30), NY) == utc(2026, 11, 1, 5, 30)


def test_adding_days_keeps_the_wall_clock_time_across_dst() -> None:
    friday_9am = utc(2026, 3, 6, 14, 0)  # 09:00 EST
    monday = add_local_days(friday_9am, 3, NY)
    assert monday.astimezone(NY).hour == 9
    assert monday - friday_9am == timedelta(days=3, hours=-1)  # the weekend lost an hour


# --- business seconds ----------------------------------------------------------------------------


def test_business_seconds_within_one_day() -> None:
    assert hours(NY).seconds_between(utc(2026, 6, 2, 14, 0), utc(2026, 6, 2, 15, 30)) == 5400


def test_business_seconds_skip_nights_and_weekends() -> None:
    friday_4pm = utc(2026, 6, 5, 20, 0)  # 16:00 EDT
    monday_10am = utc(2026, 6, 8, 14, 0)  # 10:00 EDT
    assert hours(NY).seconds_between(friday_4pm, monday_10am) == 2 * 3600


def test_business_seconds_across_the_spring_forward_weekend() -> None:
    friday_4pm_est = utc(2026, 3, 6, 21, 0)
    monday_10am_edt = utc(2026, 3, 9, 14, 0)
    assert hours(NY).seconds_between(friday_4pm_est, monday_10am_edt) == 2 * 3600


def test_business_window_spanning_the_dst_jump_counts_real_time() -> None:
    # A 01:00-04:00 window on the spring-forward Sunday lasts two real hours, not three.
    night = hours(NY, start=1, end=4, days="7")
    assert night.seconds_between(utc(2026, 3, 8, 5, 0), utc(2026, 3, 9, 4, 0)) == 2 * 3600
    # ... and on the fall-back Sunday four.
    assert night.seconds_between(utc(2026, 11, 1, 4, 0), utc(2026, 11, 2, 4, 0)) == 4 * 3600


def test_business_seconds_are_zero_for_a_reply_before_the_message() -> None:
    assert hours(NY).seconds_between(utc(2026, 6, 2, 15), utc(2026, 6, 2, 14)) == 0


def test_business_hours_follow_the_clients_zone() -> None:
    # 08:00-09:00 UTC on a Tuesday is 10:00-11:00 in Berlin (summer) and 04:00-05:00 in New York.
    start, end = utc(2026, 6, 2, 8), utc(2026, 6, 2, 9)
    assert hours(BERLIN).seconds_between(start, end) == 3600
    assert hours(NY).seconds_between(start, end) == 0


# --- free slots ----------------------------------------------------------------------------------


def test_free_slots_sit_in_business_hours_and_avoid_busy_intervals() -> None:
    monday = utc(2026, 6, 1, 0, 0)
    busy = [Interval(utc(2026, 6, 1, 14, 0), utc(2026, 6, 1, 15, 15))]  # 10:00-11:15 EDT
    slots = free_slots(
        hours(NY, 9, 12),
        start_at=monday,
        end_at=monday + timedelta(days=1),
        length=timedelta(minutes=30),
        busy=busy,
    )
    starts = [s.start_at.astimezone(NY).strftime("%H:%M") for s in slots]
    assert starts == ["09:00", "09:30", "11:30"]


def test_free_slots_start_no_earlier_than_now() -> None:
    now = utc(2026, 6, 1, 13, 40)  # 09:40 EDT
    slots = free_slots(
        hours(NY, 9, 11), start_at=now, end_at=now + timedelta(hours=5), length=timedelta(minutes=30), busy=[]
    )
    assert [s.start_at.astimezone(NY).strftime("%H:%M") for s in slots] == ["10:00", "10:30"]


def test_free_slots_keep_the_local_grid_across_dst() -> None:
    # Friday before and Monday after the spring-forward weekend: 09:00 local both days, an hour
    # apart in UTC terms.
    friday = utc(2026, 3, 6, 0, 0)
    slots = free_slots(
        hours(NY, 9, 10),
        start_at=friday,
        end_at=friday + timedelta(days=4),
        length=timedelta(hours=1),
        busy=[],
    )
    assert [s.start_at for s in slots] == [utc(2026, 3, 6, 14), utc(2026, 3, 9, 13)]


def test_free_slots_skip_non_business_days() -> None:
    saturday = utc(2026, 6, 6, 0, 0)
    slots = free_slots(
        hours(NY), start_at=saturday, end_at=saturday + timedelta(days=2), length=timedelta(hours=1), busy=[]
    )
    assert slots == []


# --- slot formatting -----------------------------------------------------------------------------


def test_slot_text_is_in_the_leads_zone_with_its_abbreviation() -> None:
    at = utc(2026, 3, 10, 13, 30)
    assert format_slot(at, NY) == "Tuesday, March 10 at 9:30 AM EDT"
    assert format_slot(at, BERLIN) == "Tuesday, March 10 at 2:30 PM CET"


def test_slot_text_changes_abbreviation_across_dst() -> None:
    assert format_slot(utc(2026, 3, 6, 17, 0), NY) == "Friday, March 6 at 12:00 PM EST"
    assert format_slot(utc(2026, 3, 9, 16, 0), NY) == "Monday, March 9 at 12:00 PM EDT"
    assert format_slot(utc(2026, 3, 29, 0, 15), BERLIN) == "Sunday, March 29 at 1:15 AM CET"
    assert format_slot(utc(2026, 3, 29, 1, 15), BERLIN) == "Sunday, March 29 at 3:15 AM CEST"


# --- inputs --------------------------------------------------------------------------------------


def test_unknown_zone_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="Mars/Olympus"):
        zone("Mars/Olympus")


@pytest.mark.parametrize("value", ["many", 0, -1, True, 1.5, None])
def test_bad_batch_size_is_a_permanent_error(value: object) -> None:
    with pytest.raises(PermanentError, match="batch_size"):
        int_param({"batch_size": value}, "batch_size", 10)


def test_batch_size_defaults_and_parses() -> None:
    assert int_param({}, "batch_size", 10) == 10
    assert int_param({"batch_size": "25"}, "batch_size", 10) == 25


def test_templates_fill_lead_fields_and_leave_the_rest() -> None:
    lead = Lead(1, 1, "ann@example.com", "Ann", None, None, LeadStatus.CONTACTED, None, None)
    assert render("Hi $first_name, {braces} and $unknown stay", lead) == "Hi Ann, {braces} and $unknown stay"
