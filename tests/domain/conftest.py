"""Fixtures for the domain's store-backed tests: one migrated database per backend, a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time
from typing import Any

import pytest

from domain.email_events import HANDLERS
from domain.model import Client, SequenceStep
from domain.model import Sequence as FollowupSequence
from domain.webhooks import EmailWebhook
from tests.support.domain_data import Store, open_store

#: Friday 2026-03-06 10:00 EST: two days before New York springs forward.
NOW = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = open_store(database_url)
    yield s
    s.engine.dispose()


def add_client(
    store: Store,
    *,
    workspace_id: str = "ws-acme",
    time_zone: str = "America/New_York",
    start: int = 9,
    end: int = 17,
    meeting_minutes: int = 30,
) -> Client:
    with store.uow() as u:
        client = u.clients.add(
            workspace_id=workspace_id,
            name=workspace_id,
            time_zone=time_zone,
            business_start=time(start),
            business_end=time(end),
            meeting_minutes=meeting_minutes,
        )
        u.commit()
    return client


def add_sequence(store: Store, client: Client, offsets: tuple[int, ...] = (2, 5)) -> FollowupSequence:
    with store.uow() as u:
        seq = u.followups.add_sequence(
            client.id,
            "intro",
            [
                SequenceStep(i + 1, d, f"Step {i + 1} for $first_name", f"Body {i + 1}")
                for i, d in enumerate(offsets)
            ],
        )
        u.commit()
    return seq


def email_sent(email: str, at: datetime, msg_id: str, **lead: Any) -> EmailWebhook:
    return EmailWebhook.model_validate(
        {
            "event": {"id": f"e-{msg_id}", "type": "EMAIL_SENT"},
            "workspace_id": "ws-acme",
            "lead": {"email": email, "first_name": email.split("@")[0].title(), **lead},
            "message": {"id": msg_id, "thread_id": f"t-{msg_id}", "subject": "Hi", "at": at},
        }
    )


def start_sequences(store: Store, *sends: tuple[str, datetime]) -> None:
    for i, (email, at) in enumerate(sends):
        with store.uow() as u:
            HANDLERS["EMAIL_SENT"](u, email_sent(email, at, f"m{i}", time_zone="America/New_York"), at)
            u.commit()
