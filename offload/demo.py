"""`offload demo`: seed a sample client, apply a burst of webhook events, run every job, show the ledger."""

from __future__ import annotations

import time as clock
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import func, select

from domain.model import AppointmentStatus, Interval, SequenceStep, local_at
from domain.ports import Booking
from domain.runs import FINAL, Trigger
from domain.webhook_drain import OPEN
from domain.webhooks import KNOWN_TYPES, EmailWebhook
from ingress.intake import WebhookIntake
from offload.wiring import Runtime
from store.local_providers import LocalCalendar
from store.models import LeadRow, SentEmailRow
from store.uow import SqlUnitOfWork

WORKSPACE = "demo-acme"
_NO_WORKER = "is a worker running? Start one with `offload worker` (or `./dev run`), or use --inline."
ZONE = "America/New_York"
#: The jobs in the order their data flows: slots feed the slot push; replies feed response timing.
JOB_ORDER = (
    "availability",
    "emailbison-availability-slot",
    "followups",
    "response-timing",
    "appointment-reconcile",
)

# (email, first name, time zone, days since the first email); None = the lead gave no zone.
_LEADS: list[tuple[str, str, str | None, float]] = [
    ("ann@example.com", "Ann", "America/New_York", 6),
    ("bob@example.com", "Bob", "America/Chicago", 3),
    ("cara@example.com", "Cara", "America/Los_Angeles", 1),
    ("dan@example.de", "Dan", "Europe/Berlin", 4),
    ("eve@example.com", "Eve", "America/New_York", 5),
    ("finn@example.com", "Finn", "America/Denver", 2),
    ("gus@example.com", "Gus", "America/New_York", 3),
    ("hal@example.com", "Hal", None, 0.2),
]


def _event(
    kind: str,
    event_id: str,
    email: str,
    *,
    first_name: str,
    tz: str | None,
    message: Mapping[str, Any] | None,
) -> EmailWebhook:
    lead_id = "pl-" + email.split("@")[0]
    return EmailWebhook.model_validate(
        {
            "event": {"id": event_id, "type": kind},
            "workspace_id": WORKSPACE,
            "lead": {
                "email": email,
                "id": lead_id,
                "first_name": first_name,
                "time_zone": tz,
                "campaign_id": "cmp-spring",
            },
            "message": message,
        }
    )


def sample_events(now: datetime) -> list[EmailWebhook]:
    """A burst of the sending platform's events over the last days, one of them delivered twice."""
    events: list[EmailWebhook] = []
    first: dict[str, datetime] = {}
    for email, name, tz, days in _LEADS:
        at = now - timedelta(days=days)
        first[email] = at
        name_key = email.split("@")[0]
        events.append(
            _event(
                "EMAIL_SENT",
                f"evt-sent-{name_key}",
                email,
                first_name=name,
                tz=tz,
                message={
                    "id": f"msg-{name_key}-1",
                    "thread_id": f"thr-{name_key}",
                    "subject": "Roof check?",
                    "at": at,
                },
            )
        )
    leads = {email: (name, tz) for email, name, tz, _ in _LEADS}

    def reply(email: str, after: timedelta, answer_after: timedelta | None) -> None:
        name, tz = leads[email]
        key = email.split("@")[0]
        at = first[email] + after
        events.append(
            _event(
                "LEAD_REPLIED",
                f"evt-reply-{key}",
                email,
                first_name=name,
                tz=tz,
                message={
                    "id": f"msg-{key}-r",
                    "thread_id": f"thr-{key}",
                    "subject": "Re: Roof check?",
                    "at": at,
                },
            )
        )
        if answer_after is not None:
            events.append(
                _event(
                    "EMAIL_SENT",
                    f"evt-answer-{key}",
                    email,
                    first_name=name,
                    tz=tz,
                    message={
                        "id": f"msg-{key}-a",
                        "thread_id": f"thr-{key}",
                        "subject": "Re: Roof check?",
                        "at": at + answer_after,
                    },
                )
            )

    reply("dan@example.de", timedelta(days=2), timedelta(hours=3, minutes=10))
    reply("gus@example.com", timedelta(days=2, hours=1), timedelta(minutes=35))
    for kind, email in (("EMAIL_BOUNCED", "eve@example.com"), ("LEAD_UNSUBSCRIBED", "finn@example.com")):
        name, tz = leads[email]
        events.append(
            _event(kind, f"evt-{kind.lower()}-{email}", email, first_name=name, tz=tz, message=None)
        )
    events.append(events[0])  # platforms deliver at least once
    return events


def seed(uow: Callable[[], SqlUnitOfWork], calendar: LocalCalendar, *, now: datetime) -> bool:
    """The sample client, its sequence, campaign and calendar; False when it already exists."""
    tz = ZoneInfo(ZONE)
    today = now.astimezone(tz).date()

    def at(days: int, hour: int, minute: int = 0) -> datetime:
        return local_at(_weekday_after(today, days), time(hour, minute), tz)

    with uow() as u:
        if u.clients.by_workspace(WORKSPACE) is not None:
            return False
        client = u.clients.add(
            workspace_id=WORKSPACE,
            name="Acme Roofing",
            time_zone=ZONE,
            business_start=time(9),
            business_end=time(17),
            meeting_minutes=30,
        )
        sequence = u.followups.add_sequence(
            client.id,
            "Roof check follow-ups",
            [
                SequenceStep(
                    1, 2, "Re: Roof check?", "Hi $first_name, did you see my note about a free roof check?"
                ),
                SequenceStep(2, 5, "Re: Roof check?", "Hi $first_name, we have slots this week. Interested?"),
                SequenceStep(
                    3, 9, "Last note", "Hi $first_name, I'll close your file for now. Reply any time."
                ),
            ],
        )
        u.leads.add_campaign(
            client.id, "cmp-spring", name="Spring outreach", active=True, sequence_id=sequence.id
        )
        u.commit()
    calendar.add_busy(client.calendar_id, Interval(at(1, 10), at(1, 12)), label="Team meeting")
    calendar.add_busy(client.calendar_id, Interval(at(2, 13), at(2, 17)), label="Site visit")
    calendar.put_booking(
        client.calendar_id, Booking("bk-gus", "gus@example.com", at(2, 10), at(2, 10, 30), "booked")
    )
    calendar.put_booking(
        client.calendar_id, Booking("bk-stranger", "stranger@example.net", at(3, 9), at(3, 9, 30), "booked")
    )
    return True


def seed_appointments(uow: Callable[[], SqlUnitOfWork], calendar: LocalCalendar, *, now: datetime) -> None:
    """Two appointments we hold, which the calendar has since moved and cancelled."""
    tz = ZoneInfo(ZONE)
    today = now.astimezone(tz).date()

    def at(days: int, hour: int, minute: int = 0) -> datetime:
        return local_at(_weekday_after(today, days), time(hour, minute), tz)

    with uow() as u:
        client = u.clients.by_workspace(WORKSPACE)
        assert client is not None
        if u.appointments.by_booking_ids(["bk-dan", "bk-bob"]):
            return
        for booking_id, email, start in (
            ("bk-dan", "dan@example.de", at(3, 11)),
            ("bk-bob", "bob@example.com", at(4, 14)),
        ):
            lead = u.leads.find(client.id, email)
            u.appointments.add(
                client_id=client.id,
                lead_id=lead.id if lead else None,
                provider_booking_id=booking_id,
                start_at=start,
                end_at=start + timedelta(minutes=30),
                status=AppointmentStatus.BOOKED,
                at=now,
            )
        u.commit()
    calendar.put_booking(
        client.calendar_id, Booking("bk-dan", "dan@example.de", at(3, 15), at(3, 15, 30), "booked")
    )
    calendar.put_booking(
        client.calendar_id, Booking("bk-bob", "bob@example.com", at(4, 14), at(4, 14, 30), "cancelled")
    )


def _weekday_after(day: date, days: int) -> date:
    """The `days`-th business day (Mon-Fri) after `day`."""
    while days > 0:
        day += timedelta(days=1)
        if day.isoweekday() <= 5:
            days -= 1
    return day


def submit_events(
    runtime: Runtime, events: list[EmailWebhook], *, inline: bool, timeout_s: float
) -> Counter[str] | None:
    """Hand each event to the webhook intake, as `POST /api/webhooks/email` does, and wait for the drain.

    Returns how the events ended (processed, duplicate, ...), or None if the drain did not finish.
    """
    intake = WebhookIntake(
        store=runtime.webhook_store,
        uow=runtime.uow,
        dispatcher=runtime.dispatcher,
        inline_types=frozenset(KNOWN_TYPES) if inline else frozenset(),
    )
    outcome: Counter[str] = Counter()
    ids: list[int] = []
    for event in events:
        accepted = intake.accept(
            event, body=event.model_dump_json(), headers={}, correlation_id="offload-demo"
        )
        if accepted.duplicate:
            outcome["duplicate"] += 1
        else:
            ids.append(accepted.id)
    deadline = clock.monotonic() + timeout_s
    while True:
        with runtime.uow() as u:
            statuses = [u.webhook_events.get(i) for i in ids]
        if all(e is not None and e.status not in OPEN for e in statuses) or clock.monotonic() > deadline:
            break
        clock.sleep(0.2)
    outcome.update(e.status for e in statuses if e is not None)
    return None if any(e is None or e.status in OPEN for e in statuses) else outcome


def run_demo(
    runtime: Runtime, *, inline: bool, timeout_s: float, echo: Callable[[str], None] = click.echo
) -> int:
    """Seed, apply events, dispatch every job and print the ledger; returns the exit status."""
    from store import db

    db.upgrade(runtime.engine)
    now = datetime.now(UTC)
    calendar = LocalCalendar(runtime.sessions)
    created = seed(runtime.uow, calendar, now=now)
    echo(f"client {WORKSPACE!r}: {'created' if created else 'already there'} (sequence, campaign, calendar)")
    events = sample_events(now)
    ended = submit_events(runtime, events, inline=inline, timeout_s=timeout_s)
    if ended is None:
        echo(f"webhook events not drained after {timeout_s:.0f}s; {_NO_WORKER}")
        return 1
    echo(f"{len(events)} webhook events through the intake and the drain: {dict(ended)}")
    seed_appointments(runtime.uow, calendar, now=now)
    mode = "inline" if inline else "queue"
    echo(f"dispatching {len(JOB_ORDER)} jobs ({mode} mode):")
    runs = []
    for job in JOB_ORDER:
        d = runtime.dispatcher.dispatch(job, trigger=Trigger.CLI, inline=inline)
        run = runtime.ledger.get(d.dispatch_key)
        if not inline and not d.duplicate:
            run = _wait_final(runtime, d.dispatch_key, timeout_s=timeout_s)
            if run is None:
                echo(f"  {job}: not finished after {timeout_s:.0f}s; {_NO_WORKER}")
                return 1
        assert run is not None
        runs.append((d, run))
    echo("")
    echo(f"{'job':30} {'status':10} {'mode':6} {'try':>3} {'dup':>3}  result")
    for _, run in runs:
        summary = ", ".join(f"{k}={v}" for k, v in (run.result or {}).items() if k != "mismatch_samples")
        echo(f"{run.job:30} {run.status:10} {run.mode:6} {run.attempt:>3} {run.duplicates:>3}  {summary}")
    with runtime.uow() as u:
        statuses = dict(
            u.session.execute(select(LeadRow.status, func.count()).group_by(LeadRow.status)).all()
        )
        outbox = u.session.scalar(select(func.count()).select_from(SentEmailRow))
    echo("")
    echo(f"lead statuses: {statuses}")
    echo(f"emails in the local outbox (sent_emails): {outbox}")
    echo("see one run with `offload show <dispatch key>`; the keys:")
    for d, _ in runs:
        echo(f"  {d.dispatch_key}")
    return 0 if all(run.status == "succeeded" for _, run in runs) else 1


def _wait_final(runtime: Runtime, key: str, *, timeout_s: float) -> Any:
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        run = runtime.ledger.get(key)
        if run is not None and run.status in FINAL:
            return run
        clock.sleep(0.2)
    return None


@click.command("demo")
@click.option("--inline", is_flag=True, help="Run the jobs in this process instead of on the workers.")
@click.option("--timeout-s", default=60.0, show_default=True, help="How long to wait for each queued run.")
@click.pass_context
def demo(click_ctx: click.Context, inline: bool, timeout_s: float) -> None:
    """Seed a sample client, apply a burst of webhook events, run the domain jobs, print the ledger."""
    from offload.cli import Ctx

    ctx = click_ctx.ensure_object(Ctx)
    click_ctx.exit(run_demo(ctx.runtime, inline=inline, timeout_s=timeout_s))
