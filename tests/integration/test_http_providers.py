"""HTTP adapters against a local server: retries on 5xx, 429, timeouts, refused connections; none on 4xx."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import PermanentError, TransientError
from domain.followups import send_due_followups
from domain.model import Interval
from domain.ports import OutgoingEmail, Ports
from offload.settings import Settings, SettingsError
from offload.wiring import with_providers
from store import db
from store.http_providers import HttpApi, HttpCalendar, HttpEmailSender, HttpLeadVariables
from store.local_providers import LocalCalendar, LocalEmailSender
from tests.domain.conftest import NOW, add_client, add_sequence, start_sequences
from tests.support.domain_data import open_store
from tests.support.fake_api import FakeApi

START, END = datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 7, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


def client_for(url: str, **kw: float) -> tuple[HttpApi, list[float]]:
    waits: list[float] = []
    api = HttpApi(
        base_url=url,
        api_key="k-123",
        timeout_s=kw.get("timeout_s", 2.0),
        max_attempts=int(kw.get("max_attempts", 3)),
        backoff_s=0.1,
        sleep=waits.append,
    )
    return api, waits


def email(key: str = "followup-task:7:step:1") -> OutgoingEmail:
    return OutgoingEmail(key, "ws-1", "ann@example.com", "Hello", "Body", "t-1")


def test_a_5xx_is_retried_with_backoff_then_succeeds(fake: FakeApi) -> None:
    fake.plan("GET", "/calendars/cal-1/busy", (503, {"error": "busy"}, 0), (502, None, 0))
    fake.busy = [{"start": "2026-03-06T14:00:00+00:00", "end": "2026-03-06T15:00:00Z"}]
    api, waits = client_for(fake.url)
    busy = HttpCalendar(api).busy(calendar_id="cal-1", start_at=START, end_at=END)
    assert busy == [Interval(datetime(2026, 3, 6, 14, tzinfo=UTC), datetime(2026, 3, 6, 15, tzinfo=UTC))]
    assert fake.count("GET", "/calendars/cal-1/busy") == 3
    assert waits == [0.1, 0.2]
    seen = fake.seen[-1]
    assert seen.headers["authorization"] == "Bearer k-123"
    assert "start=2026-03-06T00%3A00%3A00%2B00%3A00" in seen.query


def test_persistent_5xx_ends_as_a_transient_error_after_max_attempts(fake: FakeApi) -> None:
    fake.plan("GET", "/calendars/cal-1/bookings", *[(500, None, 0)] * 5)
    api, _ = client_for(fake.url, max_attempts=4)
    with pytest.raises(TransientError, match="HTTP 500"):
        HttpCalendar(api).bookings(calendar_id="cal-1", start_at=START, end_at=END)
    assert fake.count("GET", "/calendars/cal-1/bookings") == 4


def test_a_timeout_is_retried(fake: FakeApi) -> None:
    fake.plan("POST", "/emails", (200, {"message_id": "slow"}, 1.0))
    api, waits = client_for(fake.url, timeout_s=0.3)
    message_id = HttpEmailSender(api).send(email())
    assert fake.count("POST", "/emails") == 2
    assert message_id == "<msg-1@fake>"
    assert waits == [0.1]


def test_a_429_is_retried(fake: FakeApi) -> None:
    fake.plan("PUT", "/workspaces/ws-1/leads/pl-1/variables", (429, None, 0))
    api, _ = client_for(fake.url)
    HttpLeadVariables(api).set(workspace_id="ws-1", lead_ref="pl-1", variables={"availability_slot_1": "x"})
    assert fake.count("PUT", "/workspaces/ws-1/leads/pl-1/variables") == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_4xx_is_permanent_and_not_retried(fake: FakeApi, status: int) -> None:
    fake.plan("POST", "/emails", (status, {"error": "no such mailbox"}, 0))
    api, waits = client_for(fake.url)
    with pytest.raises(PermanentError, match=f"HTTP {status}: .*no such mailbox"):
        HttpEmailSender(api).send(email())
    assert fake.count("POST", "/emails") == 1
    assert waits == []


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    api, waits = client_for(f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(TransientError, match="ConnectionError"):
        HttpCalendar(api).busy(calendar_id="c", start_at=START, end_at=END)
    assert waits == [0.1]


@pytest.mark.parametrize(
    "body",
    [b"not json", {"busy": "nope"}, {"busy": [{"start": "2026-03-06T14:00:00"}]}, {"busy": [{"end": "x"}]}],
)
def test_a_malformed_answer_is_permanent(fake: FakeApi, body: object) -> None:
    fake.plan("GET", "/calendars/c/busy", (200, body, 0))
    api, _ = client_for(fake.url)
    with pytest.raises(PermanentError):
        HttpCalendar(api).busy(calendar_id="c", start_at=START, end_at=END)
    assert fake.count("GET", "/calendars/c/busy") == 1


def test_bookings_are_parsed_and_path_segments_quoted(fake: FakeApi) -> None:
    fake.plan(
        "GET",
        "/calendars/team%2Fa/bookings",
        (
            200,
            {
                "bookings": [
                    {
                        "id": 42,
                        "lead_email": "ann@example.com",
                        "start": "2026-03-06T15:00:00+00:00",
                        "end": "2026-03-06T15:30:00+00:00",
                        "status": "cancelled",
                    }
                ]
            },
            0,
        ),
    )
    api, _ = client_for(fake.url)
    [booking] = HttpCalendar(api).bookings(calendar_id="team/a", start_at=START, end_at=END)
    assert (booking.booking_id, booking.status, booking.end_at - booking.start_at) == (
        "42",
        "cancelled",
        timedelta(minutes=30),
    )


def test_the_email_idempotency_key_is_sent_on_every_attempt(fake: FakeApi) -> None:
    fake.plan("POST", "/emails", (503, None, 0), (504, None, 0))
    api, _ = client_for(fake.url)
    sender = HttpEmailSender(api)
    first = sender.send(email("followup-task:1:step:1"))
    again = sender.send(email("followup-task:1:step:1"))
    keys = [s.headers["idempotency-key"] for s in fake.seen]
    assert keys == ["followup-task:1:step:1"] * 4
    assert first == again and len(fake.sent) == 1
    assert fake.seen[-1].body == {
        "workspace_id": "ws-1",
        "to": "ann@example.com",
        "subject": "Hello",
        "body": "Body",
        "thread_id": "t-1",
    }


@pytest.mark.parametrize("body", [b"not json", {"queued": True}], ids=["not-json", "no-message-id"])
def test_a_send_the_platform_took_with_a_malformed_answer_is_retried_and_sent_once(
    fake: FakeApi, body: object
) -> None:
    fake.plan("POST", "/emails", (200, body, 0))
    api, _ = client_for(fake.url)
    sender = HttpEmailSender(api)
    with pytest.raises(TransientError):
        sender.send(email("followup-task:1:step:1"))
    assert sender.send(email("followup-task:1:step:1")) == fake.sent["followup-task:1:step:1"]
    assert len(fake.sent) == 1


def test_followups_over_http_retry_next_run_and_send_once(fake: FakeApi, database_url: str) -> None:
    store = open_store(database_url)
    try:
        client = add_client(store)
        add_sequence(store, client)
        start_sequences(store, ("ann@example.com", NOW - timedelta(days=3)))
        fake.plan("POST", "/emails", *[(503, None, 0)] * 2)
        api, _ = client_for(fake.url, max_attempts=2)
        sender = HttpEmailSender(api)
        with store.uow() as u:
            down = send_due_followups(u, sender=sender, now=NOW, batch_size=10)
            u.commit()
        with store.uow() as u:
            up = send_due_followups(u, sender=sender, now=NOW, batch_size=10)
            u.commit()
    finally:
        store.engine.dispose()
    assert (down.retry_later, up.sent) == (1, 1)
    assert len(fake.sent) == 1
    assert len({s.headers["idempotency-key"] for s in fake.seen}) == 1
    assert store.rows("followup_tasks")[0]["provider_message_id"] == "<msg-1@fake>"


def test_settings_choose_http_providers_by_url_and_local_ones_otherwise(tmp_path: object) -> None:
    engine = db.make_engine("sqlite://")
    sessions = db.make_sessions(engine)
    local = with_providers(Ports(), Settings(), sessions)
    assert isinstance(local.calendar, LocalCalendar) and isinstance(local.email, LocalEmailSender)
    remote = with_providers(
        Ports(),
        Settings(
            calendar_url="https://cal.example.com/v1/",
            calendar_api_key="c",  # type: ignore[arg-type]
            sending_platform_url="https://platform.example.com",
            sending_platform_api_key="p",  # type: ignore[arg-type]
        ),
        sessions,
    )
    assert (
        isinstance(remote.calendar, HttpCalendar)
        and remote.calendar.api.base_url == "https://cal.example.com/v1"
    )
    assert isinstance(remote.email, HttpEmailSender) and isinstance(remote.lead_variables, HttpLeadVariables)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OFFLOAD_CALENDAR_URL": "https://cal.example.com"}, "OFFLOAD_CALENDAR_API_KEY: .*required"),
        ({"OFFLOAD_SENDING_PLATFORM_URL": "ftp://x"}, "OFFLOAD_SENDING_PLATFORM_URL: .*http"),
    ],
)
def test_bad_provider_settings_stop_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message) as e:
        Settings.load()
    assert "\n" not in str(e.value)
