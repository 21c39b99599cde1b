"""Webhook handlers against the store on both backends: their effects, and that a repeat changes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from domain.email_events import HANDLERS
from domain.errors import PermanentError
from domain.model import SUBJECT_CHARS
from domain.webhooks import EmailWebhook
from tests.domain.conftest import NOW, add_client, add_sequence
from tests.support.domain_data import Store


def webhook(
    kind: str, *, email: str = "ann@example.com", message: dict[str, Any] | None = None, **lead: Any
) -> EmailWebhook:
    return EmailWebhook.model_validate(
        {
            "event": {"id": f"evt-{kind}-{email}", "type": kind},
            "workspace_id": "ws-acme",
            "lead": {"email": email, "id": "pl-1", "first_name": "Ann", "campaign_id": "cmp-1", **lead},
            "message": message,
        }
    )


def sent(at: datetime, msg_id: str = "m-1", **lead: Any) -> EmailWebhook:
    return webhook(
        "EMAIL_SENT", message={"id": msg_id, "thread_id": "t-1", "subject": "Hello", "at": at}, **lead
    )


def replied(at: datetime, msg_id: str = "m-r") -> EmailWebhook:
    return webhook(
        "LEAD_REPLIED", message={"id": msg_id, "thread_id": "t-1", "subject": "Re: Hello", "at": at}
    )


def apply(store: Store, event: EmailWebhook, now: datetime = NOW) -> None:
    with store.uow() as u:
        HANDLERS[event.event.type](u, event, now)
        u.commit()


def test_email_sent_records_the_message_marks_contacted_and_starts_the_sequence(store: Store) -> None:
    client = add_client(store)
    seq = add_sequence(store, client, offsets=(2, 5))
    apply(store, sent(NOW, time_zone="America/New_York", last_name="Lee"))

    [lead] = store.rows("leads")
    assert (lead["email"], lead["status"], lead["platform_lead_id"], lead["last_name"]) == (
        "ann@example.com",
        "contacted",
        "pl-1",
        "Lee",
    )
    [message] = store.rows("messages")
    assert (message["direction"], message["provider_message_id"], message["at"]) == ("outbound", "m-1", NOW)
    [task] = store.rows("followup_tasks")
    assert (task["sequence_id"], task["step"], task["status"], task["thread_id"]) == (
        seq.id,
        1,
        "pending",
        "t-1",
    )
    # Day offsets count in the lead's wall-clock time: Friday 10:00 EST + 2 days = Sunday 10:00 EDT.
    assert task["due_at"] == NOW + timedelta(days=2, hours=-1)
    [campaign] = store.rows("campaigns")
    assert (campaign["external_id"], campaign["active"]) == ("cmp-1", True)


def test_each_handler_applied_twice_changes_nothing_the_second_time(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    events = [
        sent(NOW - timedelta(days=3)),
        replied(NOW - timedelta(days=1)),
        webhook("EMAIL_BOUNCED", email="bob@example.com"),
        webhook("LEAD_UNSUBSCRIBED", email="cy@example.com"),
    ]
    for event in events:
        apply(store, event)
        before = store.snapshot()
        apply(store, event, NOW + timedelta(minutes=5))
        assert store.snapshot() == before, event.event.type


def test_lead_replied_records_inbound_marks_replied_and_cancels_followups(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    apply(store, sent(NOW - timedelta(days=3)))
    apply(store, replied(NOW - timedelta(hours=2)))

    [lead] = store.rows("leads")
    assert lead["status"] == "replied"
    assert [(m["direction"], m["provider_message_id"]) for m in store.rows("messages")] == [
        ("outbound", "m-1"),
        ("inbound", "m-r"),
    ]
    [task] = store.rows("followup_tasks")
    assert (task["status"], task["last_error"]) == ("cancelled", "lead replied")


@pytest.mark.parametrize(
    ("kind", "status"), [("EMAIL_BOUNCED", "bounced"), ("LEAD_UNSUBSCRIBED", "unsubscribed")]
)
def test_bounce_and_unsubscribe_set_the_status_and_cancel_followups(
    store: Store, kind: str, status: str
) -> None:
    client = add_client(store)
    add_sequence(store, client)
    apply(store, sent(NOW - timedelta(days=3)))
    apply(store, webhook(kind))
    [lead] = store.rows("leads")
    assert lead["status"] == status
    assert [t["status"] for t in store.rows("followup_tasks")] == ["cancelled"]


def test_a_late_email_sent_neither_demotes_a_replied_lead_nor_restarts_its_sequence(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    apply(store, replied(NOW - timedelta(hours=1)))
    apply(store, sent(NOW - timedelta(days=1)))
    [lead] = store.rows("leads")
    assert lead["status"] == "replied"
    assert store.rows("followup_tasks") == []
    assert len(store.rows("messages")) == 2


def test_a_second_outbound_email_does_not_start_a_second_sequence(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    apply(store, sent(NOW - timedelta(days=1), "m-1"))
    apply(store, sent(NOW, "m-2"))
    assert len(store.rows("followup_tasks")) == 1
    assert len(store.rows("messages")) == 2


@pytest.mark.parametrize("tz", ["Mars/Olympus", "America", "America/" + "x" * 300])
def test_an_unknown_time_zone_from_the_platform_is_not_stored(store: Store, tz: str) -> None:
    client = add_client(store)
    add_sequence(store, client)
    apply(store, sent(NOW, time_zone=tz))
    [lead] = store.rows("leads")
    assert lead["time_zone"] is None


def test_a_subject_longer_than_a_message_keeps_is_recorded_cut_to_it(store: Store) -> None:
    client = add_client(store)
    add_sequence(store, client)
    event = webhook("EMAIL_SENT", message={"id": "m-1", "subject": "S" * 600, "at": NOW})
    apply(store, event)
    [message] = store.rows("messages")
    assert message["subject"] == "S" * SUBJECT_CHARS


def test_an_event_for_an_unknown_workspace_is_a_permanent_error_and_writes_nothing(store: Store) -> None:
    event = sent(NOW)
    with store.uow() as u, pytest.raises(PermanentError, match="unknown workspace 'ws-acme'"):
        HANDLERS["EMAIL_SENT"](u, event, NOW)
    assert store.rows("leads") == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_zone": "Mars/Olympus"}, "unknown time zone"),
        ({"time_zone": "America"}, "unknown time zone"),
        ({"start": 17, "end": 9}, "start before they end"),
    ],
)
def test_a_client_with_impossible_hours_or_zone_is_refused(
    store: Store, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        add_client(store, **changes)


def test_every_known_event_type_has_a_handler_and_no_handler_is_unknown() -> None:
    from domain.email_events import HANDLERS
    from domain.webhooks import KNOWN_TYPES

    assert set(HANDLERS) == set(KNOWN_TYPES)
