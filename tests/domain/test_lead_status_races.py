"""A lead's status only moves forward (bounced and unsubscribed final) when two jobs touch it at once.

appointment-reconcile and the webhook drain are different jobs with caps of their own, so on PostgreSQL
they run at the same time. Each read the lead's status, and wrote what `advance` made of it: a status
the other job committed in between was overwritten, and the lead moved backwards.

PostgreSQL only: SQLite runs one write transaction at a time (BEGIN IMMEDIATE), so the two cannot
interleave there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from domain.appointment_reconcile import reconcile_appointments
from domain.email_events import HANDLERS
from domain.ports import Booking
from domain.webhooks import EmailWebhook
from tests.domain.conftest import NOW, add_client
from tests.domain.test_jobs import ny
from tests.services import Postgres
from tests.support.domain_data import Store
from tests.support.procs import reset_postgres


def _event(kind: str, msg: dict[str, Any] | None = None) -> EmailWebhook:
    return EmailWebhook.model_validate(
        {
            "event": {"id": f"evt-{kind}", "type": kind},
            "workspace_id": "ws-acme",
            "lead": {"email": "ann@example.com", "id": "pl-1", "first_name": "Ann", "campaign_id": "cmp-1"},
            "message": msg,
        }
    )


SENT = _event(
    "EMAIL_SENT", {"id": "m-1", "thread_id": "t-1", "subject": "Hello", "at": NOW - timedelta(days=3)}
)
REPLIED = _event(
    "LEAD_REPLIED", {"id": "m-r", "thread_id": "t-1", "subject": "Re", "at": NOW - timedelta(hours=1)}
)
UNSUBSCRIBED = _event("LEAD_UNSUBSCRIBED")


def _apply(store: Store, event: EmailWebhook) -> None:
    with store.uow() as u:
        HANDLERS[event.event.type](u, event, NOW)
        u.commit()


class _Hooked:
    """Delegates to `inner`, except that after `repo.method(...)` returns it runs `hook` once."""

    def __init__(self, inner: Any, method: str, hook: Any) -> None:
        self._inner, self._method, self._hook = inner, method, hook

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            result = attr(*a, **kw)
            hook, self._hook = self._hook, None
            if hook is not None:
                hook()
            return result

        return call


class _Uow:
    def __init__(self, inner: Any, repo: str, method: str, hook: Any) -> None:
        self._inner = inner
        setattr(self, repo, _Hooked(getattr(inner, repo), method, hook))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    reset_postgres(postgres.url)
    return postgres.url


def _setup(store: Store) -> None:
    client = add_client(store)
    _apply(store, SENT)  # ann: contacted
    store.calendar.put_booking(
        client.calendar_id, Booking("bk-1", "ann@example.com", ny(9, 10), ny(9, 10, 30), "booked")
    )


def _status(store: Store) -> str:
    [lead] = store.rows("leads")
    return str(lead["status"])


def test_an_unsubscribe_processed_during_reconcile_is_not_overwritten_by_meeting_booked(
    store: Store,
) -> None:
    _setup(store)
    with store.uow() as real:
        # The drain processes LEAD_UNSUBSCRIBED after reconcile read the lead, before it wrote.
        u = _Uow(real, "leads", "find", lambda: _apply(store, UNSUBSCRIBED))
        result = reconcile_appointments(u, calendar=store.calendar, now=NOW, batch_size=10)  # type: ignore[arg-type]
        real.commit()
    assert result.created == 1
    # "bounced or unsubscribed override any of them ... unsubscribed is final" (domain.model.advance)
    assert _status(store) == "unsubscribed"


def test_a_meeting_booked_by_reconcile_during_a_reply_is_not_demoted_to_replied(
    store: Store,
) -> None:
    _setup(store)

    def reconcile() -> None:
        with store.uow() as other:
            reconcile_appointments(other, calendar=store.calendar, now=NOW, batch_size=10)
            other.commit()

    with store.uow() as real:
        # Reconcile books the meeting after the drain's LEAD_REPLIED read the lead, before it wrote.
        u = _Uow(real, "messages", "add", reconcile)
        HANDLERS["LEAD_REPLIED"](u, REPLIED, NOW)
        real.commit()
    assert [a["provider_booking_id"] for a in store.rows("appointments")] == ["bk-1"]
    # Status only moves forward: meeting_booked must not go back to replied (a replied lead is
    # offered meeting slots again by emailbison-availability-slot).
    assert _status(store) == "meeting_booked"
