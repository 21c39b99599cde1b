"""The five jobs against the store on both backends, on a fixed clock: effects, idempotency, bounds."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from domain.appointment_reconcile import reconcile_appointments
from domain.availability import refresh_availability
from domain.availability_slot import push_availability_slots
from domain.email_events import HANDLERS
from domain.errors import PermanentError, TransientError
from domain.followups import send_due_followups
from domain.model import (
    SUBJECT_CHARS,
    AppointmentStatus,
    Client,
    Direction,
    Interval,
    LeadStatus,
    SequenceStep,
    local_at,
)
from domain.ports import Booking, OutgoingEmail
from domain.response_timing import record_response_times
from domain.webhooks import EmailWebhook
from store.models import AvailabilitySlotRow
from tests.domain.conftest import NOW, add_client, add_sequence, start_sequences
from tests.support.domain_data import Store

NY = ZoneInfo("America/New_York")


def ny(day: int, hour: int, minute: int = 0) -> datetime:
    """A March 2026 wall-clock time in New York, as UTC."""
    return local_at(datetime(2026, 3, day).date(), time(hour, minute), NY)


def add_lead(
    store: Store,
    client: Client,
    email: str,
    *,
    status: LeadStatus = LeadStatus.CONTACTED,
    tz: str | None = None,
    campaign: str | None = "cmp-1",
    active: bool = True,
    platform_id: str | None = None,
) -> int:
    with store.uow() as u:
        campaign_id = None
        if campaign is not None:
            found = (
                u.leads.campaign(client.id, campaign)
                if active
                else u.leads.add_campaign(client.id, campaign, name=campaign, active=False, sequence_id=None)
            )
            campaign_id = found.id
        lead = u.leads.upsert(
            client.id, email, time_zone=tz, platform_lead_id=platform_id, campaign_id=campaign_id
        )
        u.leads.advance(lead.id, status)
        u.commit()
    return lead.id


def add_message(
    store: Store,
    client: Client,
    lead_id: int,
    direction: Direction,
    msg_id: str,
    at: datetime,
    thread: str | None = "t",
) -> None:
    with store.uow() as u:
        u.messages.add(
            client_id=client.id,
            lead_id=lead_id,
            direction=direction,
            provider_message_id=msg_id,
            thread_id=thread,
            subject=None,
            at=at,
        )
        u.commit()


# --- response-timing -----------------------------------------------------------------------------


def test_response_timing_records_seconds_and_business_seconds_across_a_dst_weekend(store: Store) -> None:
    client = add_client(store)
    lead = add_lead(store, client, "ann@example.com")
    add_message(store, client, lead, Direction.OUTBOUND, "o-0", ny(5, 9))
    add_message(store, client, lead, Direction.INBOUND, "i-1", ny(6, 16))  # Friday 16:00 EST
    add_message(store, client, lead, Direction.OUTBOUND, "o-1", ny(9, 10))  # Monday 10:00 EDT
    add_message(store, client, lead, Direction.INBOUND, "i-2", ny(9, 11))  # not answered yet

    with store.uow() as u:
        result = record_response_times(u, now=NOW, batch_size=10)
        u.commit()

    assert result.recorded == 1 and not result.has_more
    [timing] = store.rows("response_timings")
    assert timing["response_s"] == 65 * 3600  # 21:00Z Friday to 14:00Z Monday
    assert timing["business_s"] == 2 * 3600  # Friday 16-17 and Monday 9-10


def test_response_timing_second_run_changes_nothing(store: Store) -> None:
    client = add_client(store)
    lead = add_lead(store, client, "ann@example.com")
    add_message(store, client, lead, Direction.INBOUND, "i-1", ny(3, 10))
    add_message(store, client, lead, Direction.OUTBOUND, "o-1", ny(3, 11))
    with store.uow() as u:
        assert record_response_times(u, now=NOW, batch_size=10).recorded == 1
        u.commit()
    before = store.snapshot()
    with store.uow() as u:
        assert record_response_times(u, now=NOW + timedelta(hours=1), batch_size=10).recorded == 0
        u.commit()
    assert store.snapshot() == before


def test_response_timing_upsert_follows_a_late_earlier_reply_and_ignores_other_threads(store: Store) -> None:
    client = add_client(store)
    lead = add_lead(store, client, "ann@example.com")
    add_message(store, client, lead, Direction.INBOUND, "i-1", ny(3, 10), thread="a")
    add_message(store, client, lead, Direction.OUTBOUND, "o-other", ny(3, 10, 5), thread="b")
    add_message(store, client, lead, Direction.OUTBOUND, "o-late", ny(3, 12), thread="a")
    with store.uow() as u:
        record_response_times(u, now=NOW, batch_size=10)
        u.commit()
    assert store.rows("response_timings")[0]["response_s"] == 7200
    add_message(store, client, lead, Direction.OUTBOUND, "o-early", ny(3, 10, 30), thread="a")
    with store.uow() as u:
        assert record_response_times(u, now=NOW, batch_size=10).recorded == 1
        u.commit()
    [timing] = store.rows("response_timings")
    assert (timing["response_s"], timing["business_s"]) == (1800, 1800)


def test_response_timing_is_bounded_by_batch_size(store: Store) -> None:
    client = add_client(store)
    lead = add_lead(store, client, "ann@example.com")
    for i in range(3):
        add_message(store, client, lead, Direction.INBOUND, f"i-{i}", ny(2 + i, 10), thread=f"t{i}")
        add_message(store, client, lead, Direction.OUTBOUND, f"o-{i}", ny(2 + i, 11), thread=f"t{i}")
    with store.uow() as u:
        first = record_response_times(u, now=NOW, batch_size=2)
        u.commit()
    with store.uow() as u:
        second = record_response_times(u, now=NOW, batch_size=2)
        u.commit()
    assert (first.recorded, first.has_more, second.recorded, second.has_more) == (2, True, 1, False)


# --- followups -----------------------------------------------------------------------------------


class Recorder:
    """An EmailSender that records calls and fails on demand before or after the inner send."""

    def __init__(
        self, inner: Any, *, fail: list[Exception | None] | None = None, after: bool = False
    ) -> None:
        self.inner = inner
        self.fail = list(fail or [])
        self.after = after
        self.keys: list[str] = []

    def send(self, email: OutgoingEmail) -> str:
        self.keys.append(email.idempotency_key)
        error = self.fail.pop(0) if self.fail else None
        if error is not None and not self.after:
            raise error
        message_id: str = self.inner.send(email)
        if error is not None:
            raise error
        return message_id


def test_followups_sends_due_tasks_and_schedules_the_next_step_in_local_time(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client, offsets=(2, 5))
    start_sequences(
        store, ("ann@example.com", NOW - timedelta(days=3)), ("bob@example.com", NOW - timedelta(days=1))
    )

    with store.uow() as u:
        result = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=10)
        u.commit()

    assert (result.due, result.sent, result.scheduled, result.has_more) == (1, 1, 1, False)
    [outbox] = store.rows("sent_emails")
    ann_task = store.rows("followup_tasks")[0]
    assert outbox["idempotency_key"] == f"followup-task:{ann_task['id']}:step:1"
    assert (outbox["to_email"], outbox["subject"], outbox["thread_id"]) == (
        "ann@example.com",
        "Step 1 for Ann",
        "t-m0",
    )
    assert (ann_task["status"], ann_task["provider_message_id"]) == ("sent", outbox["provider_message_id"])
    step2 = [t for t in store.rows("followup_tasks") if t["step"] == 2]
    # Anchor Tuesday 10:00 EST + 5 days = Sunday 10:00 EDT (the clocks moved in between).
    assert [t["due_at"] for t in step2] == [ny(8, 10)]
    recorded = {m["provider_message_id"] for m in store.rows("messages")}
    assert outbox["provider_message_id"] in recorded


def test_followups_second_run_changes_nothing(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    with store.uow() as u:
        send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=10)
        u.commit()
    before = store.snapshot()
    with store.uow() as u:
        again = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=10)
        u.commit()
    assert (again.due, again.sent, again.scheduled, again.cancelled) == (0, 0, 0, 0)
    assert store.snapshot() == before


def test_followups_cancels_instead_of_sending_when_the_lead_is_no_longer_eligible(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    with store.uow() as u:
        u.leads.advance(1, LeadStatus.INTERESTED)
        u.commit()
    with store.uow() as u:
        result = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=10)
        u.commit()
    assert (result.sent, result.cancelled) == (0, 1)
    assert store.rows("sent_emails") == []
    assert [t["status"] for t in store.rows("followup_tasks")] == ["cancelled"]


def test_a_transient_send_failure_is_retried_by_the_next_run_and_sent_once(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(
        store, ("ann@example.com", NOW - timedelta(days=3)), ("bob@example.com", NOW - timedelta(days=3))
    )
    flaky = Recorder(store.email(NOW), fail=[TransientError("HTTP 503")])
    with store.uow() as u:
        first = send_due_followups(u, sender=flaky, now=NOW, batch_size=10)
        u.commit()
    assert (first.sent, first.retry_later, first.has_more) == (0, 1, True)
    task = store.rows("followup_tasks")[0]
    assert (task["status"], task["attempts"], task["last_error"]) == (
        "pending",
        1,
        "TransientError: HTTP 503",
    )

    with store.uow() as u:
        second = send_due_followups(u, sender=flaky, now=NOW + timedelta(minutes=5), batch_size=10)
        u.commit()
    assert second.sent == 2
    assert flaky.keys[0] == flaky.keys[1]  # the retry carried the same idempotency key
    assert len(store.rows("sent_emails")) == 2


def test_a_send_whose_answer_was_lost_is_not_sent_twice(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    # The provider takes the email, then the answer is lost: the task stays pending.
    lossy = Recorder(store.email(NOW), fail=[TransientError("read timeout")], after=True)
    with store.uow() as u:
        send_due_followups(u, sender=lossy, now=NOW, batch_size=10)
        u.commit()
    assert [t["status"] for t in store.rows("followup_tasks")] == ["pending"]
    with store.uow() as u:
        assert send_due_followups(u, sender=lossy, now=NOW, batch_size=10).sent == 1
        u.commit()
    [outbox] = store.rows("sent_emails")
    assert store.rows("followup_tasks")[0]["provider_message_id"] == outbox["provider_message_id"]


def test_a_permanent_send_failure_marks_the_task_failed_and_the_run_goes_on(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(
        store, ("ann@example.com", NOW - timedelta(days=3)), ("bob@example.com", NOW - timedelta(days=3))
    )
    picky = Recorder(store.email(NOW), fail=[PermanentError("HTTP 422: bad address")])
    with store.uow() as u:
        result = send_due_followups(u, sender=picky, now=NOW, batch_size=10)
        u.commit()
    assert (result.sent, result.failed) == (1, 1)
    statuses = sorted((t["step"], t["status"]) for t in store.rows("followup_tasks"))
    assert statuses == [(1, "failed"), (1, "sent"), (2, "pending")]


@pytest.mark.parametrize(
    ("fault", "max_attempts"),
    [(PermanentError("HTTP 422"), 3), (TransientError("read timeout"), 3), (TransientError("timeout"), 1)],
    ids=["refused", "to-retry", "given-up"],
)
def test_a_task_cancelled_by_a_reply_while_its_send_was_in_flight_stays_cancelled(
    store: Store, fault: Exception, max_attempts: int
) -> None:
    """The send failed after the webhook drain had cancelled the task: marking it failed (or counting
    the attempt) went by the run's own copy of the row, and overwrote the cancellation."""
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    reply = EmailWebhook.model_validate(
        {
            "event": {"id": "e-r", "type": "LEAD_REPLIED"},
            "workspace_id": "ws-acme",
            "lead": {"email": "ann@example.com"},
            "message": {"id": "m-r", "thread_id": "t-m0", "at": NOW - timedelta(minutes=1)},
        }
    )

    class ReplyDuringSend:
        def send(self, email: OutgoingEmail) -> str:
            with store.uow() as u:
                HANDLERS["LEAD_REPLIED"](u, reply, NOW)
                u.commit()
            raise fault

    with store.uow() as u:
        sender = ReplyDuringSend()
        result = send_due_followups(u, sender=sender, now=NOW, batch_size=10, max_attempts=max_attempts)
        u.commit()
    [task] = store.rows("followup_tasks")
    assert (task["status"], task["last_error"], task["attempts"]) == ("cancelled", "lead replied", 0)
    assert result.failed == 0


def test_a_task_that_keeps_failing_transiently_is_given_up(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
    down = Recorder(store.email(NOW), fail=[TransientError("down")] * 3)
    for _ in range(3):
        with store.uow() as u:
            send_due_followups(u, sender=down, now=NOW, batch_size=10, max_attempts=3)
            u.commit()
    [task] = store.rows("followup_tasks")
    assert (task["status"], task["attempts"]) == ("failed", 3)


def test_followups_is_bounded_by_batch_size(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    start_sequences(store, *[(f"l{i}@example.com", NOW - timedelta(days=3)) for i in range(3)])
    with store.uow() as u:
        first = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=2)
        u.commit()
    with store.uow() as u:
        second = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=2)
        u.commit()
    assert (first.sent, first.has_more, second.sent, second.has_more) == (2, True, 1, False)


# --- availability --------------------------------------------------------------------------------


class CountingCalendar:
    def __init__(self, inner: Any, *, fail: Exception | None = None) -> None:
        self.inner, self.fail, self.calls = inner, fail, 0

    def busy(self, **kw: Any) -> Any:
        self.calls += 1
        if self.fail:
            raise self.fail
        return self.inner.busy(**kw)

    def bookings(self, **kw: Any) -> Any:
        self.calls += 1
        if self.fail:
            raise self.fail
        return self.inner.bookings(**kw)


def slot_starts(store: Store, client_id: int) -> list[str]:
    return [
        r["start_at"].astimezone(NY).strftime("%a %H:%M %Z")
        for r in store.rows("availability_slots")
        if r["client_id"] == client_id
    ]


def test_availability_lists_free_slots_in_business_hours_across_the_dst_weekend(store: Store) -> None:
    client = add_client(store, start=9, end=11, meeting_minutes=30)
    store.calendar.add_busy(client.calendar_id, Interval(ny(9, 9, 15), ny(9, 10)))  # Monday
    store.calendar.put_booking(
        client.calendar_id, Booking("b1", "x@example.com", ny(10, 10), ny(10, 10, 30), "booked")
    )
    store.calendar.put_booking(
        client.calendar_id, Booking("b2", "y@example.com", ny(10, 9), ny(10, 9, 30), "cancelled")
    )
    with store.uow() as u:
        result = refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=10, days=4)
        u.commit()
    assert slot_starts(store, client.id) == [
        "Fri 10:00 EST",
        "Fri 10:30 EST",
        "Mon 10:00 EDT",
        "Mon 10:30 EDT",
        "Tue 09:00 EDT",
        "Tue 09:30 EDT",
        "Tue 10:30 EDT",
    ]
    assert (result.clients, result.changed, result.slots, result.has_more) == (1, 1, 7, False)


def test_availability_second_run_changes_nothing(store: Store) -> None:
    client = add_client(store)
    store.calendar.add_busy(client.calendar_id, Interval(ny(9, 9), ny(9, 12)))
    with store.uow() as u:
        refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=10)
        u.commit()
    before = store.snapshot(ignore=[("clients", "availability_refreshed_at")])
    with store.uow() as u:
        again = refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=10, min_age_s=0)
        u.commit()
    assert (again.clients, again.changed) == (1, 0)
    assert store.snapshot(ignore=[("clients", "availability_refreshed_at")]) == before


def test_availability_replaces_the_set_when_the_calendar_changes(store: Store) -> None:
    client = add_client(store, start=9, end=10)
    with store.uow() as u:
        refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=10, days=4)
        u.commit()
    store.calendar.add_busy(client.calendar_id, Interval(ny(9, 9), ny(9, 10)))
    with store.uow() as u:
        result = refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=10, days=4, min_age_s=0)
        u.commit()
    assert result.changed == 1
    assert slot_starts(store, client.id) == ["Tue 09:00 EDT", "Tue 09:30 EDT"]


def test_readers_never_see_a_half_written_slot_set(store: Store) -> None:
    client = add_client(store)
    sets = [
        [Interval(NOW + timedelta(hours=h), NOW + timedelta(hours=h, minutes=30)) for h in range(n)]
        for n in (8, 3)
    ]
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with store.sessions() as s:
                seen.add(
                    int(
                        s.scalar(
                            select(func.count())
                            .select_from(AvailabilitySlotRow)
                            .where(AvailabilitySlotRow.client_id == client.id)
                        )
                        or 0
                    )
                )

    reader = threading.Thread(target=read)
    with store.uow() as u:
        u.availability.replace(client.id, sets[0], at=NOW)
        u.commit()
    reader.start()
    try:
        for i in range(40):
            with store.uow() as u:
                assert u.availability.replace(client.id, sets[(i + 1) % 2], at=NOW)
                u.commit()
    finally:
        done.set()
        reader.join()
    assert seen <= {8, 3} and seen


def test_availability_stops_on_a_transient_calendar_fault_and_skips_a_refused_client(store: Store) -> None:
    add_client(store, workspace_id="ws-a")
    add_client(store, workspace_id="ws-b")
    with store.uow() as u:
        down = refresh_availability(
            u, calendar=CountingCalendar(store.calendar, fail=TransientError("503")), now=NOW, batch_size=10
        )
        u.commit()
    assert (down.clients, down.has_more) == (0, True)
    with store.uow() as u:  # the client that failed went to the back of the line: the other is next
        refused = refresh_availability(
            u, calendar=CountingCalendar(store.calendar, fail=PermanentError("404")), now=NOW, batch_size=10
        )
        u.commit()
    assert (refused.clients, refused.failed, refused.has_more) == (0, 1, False)


class OneCalendarTimesOut:
    """The calendar provider times out for one calendar only (a huge one, say), every time."""

    def __init__(self, inner: Any, bad: str) -> None:
        self.inner, self.bad = inner, bad

    def busy(self, *, calendar_id: str, **kw: Any) -> Any:
        if calendar_id == self.bad:
            raise TransientError("ReadTimeout")
        return self.inner.busy(calendar_id=calendar_id, **kw)


def test_one_calendar_that_keeps_timing_out_does_not_starve_the_other_clients(store: Store) -> None:
    bad, good = add_client(store, workspace_id="ws-a"), add_client(store, workspace_id="ws-b")
    calendar = OneCalendarTimesOut(store.calendar, bad.calendar_id)
    for run in range(2):
        with store.uow() as u:
            refresh_availability(u, calendar=calendar, now=NOW + timedelta(minutes=run), batch_size=10)
            u.commit()
    refreshed = {r["workspace_id"]: r["availability_refreshed_at"] for r in store.rows("clients")}
    assert refreshed[good.workspace_id] == NOW + timedelta(minutes=1)


def test_availability_is_bounded_and_takes_the_stalest_clients_first(store: Store) -> None:
    for name in ("ws-a", "ws-b", "ws-c"):
        add_client(store, workspace_id=name)
    with store.uow() as u:
        first = refresh_availability(u, calendar=store.calendar, now=NOW, batch_size=2)
        u.commit()
    with store.uow() as u:
        second = refresh_availability(
            u, calendar=store.calendar, now=NOW + timedelta(minutes=1), batch_size=2
        )
        u.commit()
    assert (first.clients, first.has_more, second.clients, second.has_more) == (2, True, 1, False)


# --- emailbison-availability-slot ----------------------------------------------------------------


class RecordingVariables:
    def __init__(self, inner: Any, *, fail: Exception | None = None) -> None:
        self.inner, self.fail = inner, fail
        self.calls: list[tuple[str, Mapping[str, str]]] = []

    def set(self, *, workspace_id: str, lead_ref: str, variables: Mapping[str, str]) -> None:
        self.calls.append((lead_ref, dict(variables)))
        if self.fail:
            raise self.fail
        self.inner.set(workspace_id=workspace_id, lead_ref=lead_ref, variables=variables)


def slot_fixture(store: Store) -> Client:
    client = add_client(store)
    add_lead(store, client, "ann@example.com", tz="America/New_York", platform_id="pl-ann")
    add_lead(store, client, "dan@example.de", tz="Europe/Berlin", status=LeadStatus.REPLIED)
    add_lead(store, client, "hal@example.com", tz=None, status=LeadStatus.NEW)
    add_lead(store, client, "pam@example.com", campaign="cmp-paused", active=False)
    add_lead(store, client, "bo@example.com", status=LeadStatus.BOUNCED)
    add_lead(store, client, "mo@example.com", status=LeadStatus.MEETING_BOOKED)
    with store.uow() as u:
        # Friday 11:30 EST and Monday 9:00 EDT; a slot within the hour of lead time is not offered.
        u.availability.replace(
            client.id,
            [Interval(s, s + timedelta(minutes=30)) for s in (ny(6, 10, 30), ny(6, 11, 30), ny(9, 9))],
            at=NOW,
        )
        u.commit()
    return client


def test_slot_push_sends_the_next_two_slots_formatted_in_each_leads_zone(store: Store) -> None:
    client = slot_fixture(store)
    platform = RecordingVariables(store.lead_variables(NOW))
    with store.uow() as u:
        result = push_availability_slots(u, lead_variables=platform, now=NOW, batch_size=10)
        u.commit()
    assert (result.leads, result.pushed, result.unchanged, result.has_more) == (3, 3, 0, False)
    assert store.lead_variables(NOW).get(workspace_id=client.workspace_id, lead_ref="pl-ann") == {
        "availability_slot_1": "Friday, March 6 at 11:30 AM EST",
        "availability_slot_2": "Monday, March 9 at 9:00 AM EDT",
    }
    assert store.lead_variables(NOW).get(workspace_id=client.workspace_id, lead_ref="dan@example.de") == {
        "availability_slot_1": "Friday, March 6 at 5:30 PM CET",
        "availability_slot_2": "Monday, March 9 at 2:00 PM CET",
    }
    hal = store.lead_variables(NOW).get(workspace_id=client.workspace_id, lead_ref="hal@example.com")
    assert hal["availability_slot_1"] == "Friday, March 6 at 11:30 AM EST"  # the client's zone


def test_slot_push_second_run_pushes_nothing(store: Store) -> None:
    slot_fixture(store)
    with store.uow() as u:
        push_availability_slots(u, lead_variables=store.lead_variables(NOW), now=NOW, batch_size=10)
        u.commit()
    platform = RecordingVariables(store.lead_variables(NOW))
    before = store.snapshot(ignore=[("lead_slot_pushes", "checked_at")])
    with store.uow() as u:
        again = push_availability_slots(u, lead_variables=platform, now=NOW, batch_size=10, min_age_s=0)
        u.commit()
    assert (again.pushed, again.unchanged) == (0, 3)
    assert platform.calls == []
    assert store.snapshot(ignore=[("lead_slot_pushes", "checked_at")]) == before


def test_slot_push_pushes_again_only_leads_whose_text_changed(store: Store) -> None:
    client = slot_fixture(store)
    with store.uow() as u:
        push_availability_slots(u, lead_variables=store.lead_variables(NOW), now=NOW, batch_size=10)
        u.commit()
    with store.uow() as u:
        u.availability.replace(client.id, [Interval(ny(9, 9), ny(9, 9, 30))], at=NOW)
        u.commit()
    platform = RecordingVariables(store.lead_variables(NOW))
    with store.uow() as u:
        result = push_availability_slots(u, lead_variables=platform, now=NOW, batch_size=10, min_age_s=0)
        u.commit()
    assert result.pushed == 3
    assert platform.calls[0] == (
        "pl-ann",
        {"availability_slot_1": "Monday, March 9 at 9:00 AM EDT", "availability_slot_2": ""},
    )


def test_slot_push_retries_a_lead_after_a_transient_fault(store: Store) -> None:
    slot_fixture(store)
    with store.uow() as u:
        down = push_availability_slots(
            u, lead_variables=RecordingVariables(None, fail=TransientError("503")), now=NOW, batch_size=10
        )
        u.commit()
    assert (down.pushed, down.has_more) == (0, True)
    # The lead that failed is checked, nothing pushed: it goes to the back of the line, so one lead
    # that keeps failing cannot starve the others. They are next, and it has its turn again later.
    [failed] = store.rows("lead_slot_pushes")
    assert (failed["variables"], failed["pushed_at"]) == (None, None)
    for now, pushed in ((NOW, 2), (NOW + timedelta(minutes=11), 1)):
        with store.uow() as u:
            again = push_availability_slots(
                u, lead_variables=store.lead_variables(now), now=now, batch_size=10
            )
            u.commit()
        assert again.pushed == pushed
    pushes = {r["lead_id"]: r["pushed_at"] for r in store.rows("lead_slot_pushes")}
    assert pushes[failed["lead_id"]] == NOW + timedelta(minutes=11)


# --- appointment-reconcile -----------------------------------------------------------------------


def reconcile_fixture(store: Store) -> Client:
    client = add_client(store)
    ann = add_lead(store, client, "ann@example.com")
    bob = add_lead(store, client, "bob@example.com")
    add_lead(store, client, "cy@example.com", status=LeadStatus.REPLIED)
    add_lead(store, client, "uma@example.com", status=LeadStatus.UNSUBSCRIBED)
    with store.uow() as u:
        for booking_id, lead, start in (
            ("bk-ann", ann, ny(9, 10)),
            ("bk-bob", bob, ny(10, 10)),
            ("bk-gone", bob, ny(11, 10)),
        ):
            u.appointments.add(
                client_id=client.id,
                lead_id=lead,
                provider_booking_id=booking_id,
                start_at=start,
                end_at=start + timedelta(minutes=30),
                status=AppointmentStatus.BOOKED,
                at=NOW - timedelta(days=1),
            )
        u.commit()
    cal = store.calendar
    cal.put_booking(
        client.calendar_id, Booking("bk-ann", "ann@example.com", ny(9, 14), ny(9, 14, 30), "booked")
    )
    cal.put_booking(
        client.calendar_id, Booking("bk-bob", "bob@example.com", ny(10, 10), ny(10, 10, 30), "cancelled")
    )
    cal.put_booking(
        client.calendar_id, Booking("bk-cy", "CY@example.com", ny(12, 11), ny(12, 11, 30), "booked")
    )
    cal.put_booking(
        client.calendar_id, Booking("bk-uma", "uma@example.com", ny(12, 12), ny(12, 12, 30), "booked")
    )
    cal.put_booking(
        client.calendar_id, Booking("bk-who", "who@example.net", ny(12, 13), ny(12, 13, 30), "booked")
    )
    cal.put_booking(
        client.calendar_id, Booking("bk-x", "x@example.net", ny(12, 14), ny(12, 14, 30), "cancelled")
    )
    return client


def appointments(store: Store) -> dict[str, tuple[str, datetime]]:
    return {a["provider_booking_id"]: (a["status"], a["start_at"]) for a in store.rows("appointments")}


def test_reconcile_applies_cancellations_reschedules_and_creates_missing_appointments(store: Store) -> None:
    reconcile_fixture(store)
    with store.uow() as u:
        result = reconcile_appointments(u, calendar=store.calendar, now=NOW, batch_size=10)
        u.commit()
    assert appointments(store) == {
        "bk-ann": ("rescheduled", ny(9, 14)),
        "bk-bob": ("cancelled", ny(10, 10)),
        "bk-gone": ("booked", ny(11, 10)),
        "bk-cy": ("booked", ny(12, 11)),
        "bk-uma": ("booked", ny(12, 12)),
    }
    statuses = {lead["email"]: lead["status"] for lead in store.rows("leads")}
    assert statuses["cy@example.com"] == "meeting_booked"
    assert statuses["uma@example.com"] == "unsubscribed"  # never un-unsubscribed by a booking
    assert (result.created, result.cancelled, result.rescheduled, result.leads_booked) == (2, 1, 1, 1)
    assert result.mismatches == 2
    assert sorted(result.mismatch_samples) == [
        "appointment 3: booking bk-gone missing",
        "booking bk-who: no lead 'who@example.net'",
    ]
    assert all(
        a["last_reconciled_at"] == NOW
        for a in store.rows("appointments")
        if a["provider_booking_id"] != "bk-gone"
    )


def test_reconcile_second_run_changes_nothing_and_reports_the_same_mismatches(store: Store) -> None:
    reconcile_fixture(store)
    with store.uow() as u:
        reconcile_appointments(u, calendar=store.calendar, now=NOW, batch_size=10)
        u.commit()
    before = store.snapshot()
    with store.uow() as u:
        again = reconcile_appointments(u, calendar=store.calendar, now=NOW, batch_size=10, min_age_s=0)
        u.commit()
    assert (again.created, again.cancelled, again.rescheduled, again.updated, again.leads_booked) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert again.mismatches == 2
    assert store.snapshot() == before


def test_reconcile_takes_a_booking_the_provider_lists_twice_once(store: Store) -> None:
    """It was inserted twice: the unique booking id failed the run, at the same client every time."""
    client = add_client(store)
    add_lead(store, client, "ann@example.com", status=LeadStatus.CONTACTED)
    booking = Booking("bk-1", "ann@example.com", ny(9, 10), ny(9, 10, 30), "booked")

    class Repeating:
        def bookings(self, **_: Any) -> list[Booking]:
            return [booking, booking]

    with store.uow() as u:
        result = reconcile_appointments(u, calendar=Repeating(), now=NOW, batch_size=10)  # type: ignore[arg-type]
        u.commit()
    assert (result.created, result.leads_booked) == (1, 1)
    assert [a["provider_booking_id"] for a in store.rows("appointments")] == ["bk-1"]


def test_reconcile_stops_on_a_transient_calendar_fault(store: Store) -> None:
    reconcile_fixture(store)
    with store.uow() as u:
        result = reconcile_appointments(
            u,
            calendar=CountingCalendar(store.calendar, fail=TransientError("timeout")),
            now=NOW,
            batch_size=10,
        )
        u.commit()
    assert (result.clients, result.has_more) == (0, True)
    assert {s for s, _ in appointments(store).values()} == {"booked"}
    # The client goes to the back of the line: one calendar that keeps failing starves no other.
    assert [r["reconciled_at"] for r in store.rows("clients")] == [NOW]


def test_a_rendered_subject_longer_than_a_message_keeps_is_sent_and_recorded_cut_to_it(store: Store) -> None:
    """A name filled in can take a subject past its column: cut, it is sent as recorded; the job goes on."""
    client = add_client(store)
    with store.uow() as u:
        seq = u.followups.add_sequence(client.id, "s", [SequenceStep(1, 0, "S" * 450 + " $first_name", "b")])
        for email, name, hours in (("long@example.com", "N" * 100, 2), ("bob@example.com", "Bob", 1)):
            lead = u.leads.upsert(client.id, email, first_name=name)
            u.followups.add_task(
                lead_id=lead.id,
                sequence_id=seq.id,
                step=1,
                anchor_at=NOW - timedelta(days=1),
                due_at=NOW - timedelta(hours=hours),
                thread_id=None,
            )
        u.commit()
    with store.uow() as u:
        result = send_due_followups(u, sender=store.email(NOW), now=NOW, batch_size=10)
        u.commit()
    assert result.sent == 2
    subjects = {row["to_email"]: row["subject"] for row in store.rows("sent_emails")}
    assert subjects["long@example.com"] == ("S" * 450 + " " + "N" * 100)[:SUBJECT_CHARS]
    assert sorted(m["subject"] for m in store.rows("messages")) == sorted(subjects.values())
