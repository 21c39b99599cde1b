"""`POST /api/webhooks/email` through falcon.testing: the mission's bad inputs, and acceptance."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from falcon import testing
from pydantic import SecretStr

from offload.settings import Settings
from offload.web import make_app
from offload.wiring import Runtime, build
from tests.ingress.conftest import (
    DRAIN_QUEUE,
    effects_of,
    queued_messages,
    run_count,
    stored_events,
    with_secrets,
)
from tests.services import Rabbit
from tests.support.jobs import TEST_REGISTRY
from tests.support.webhooks import RECORDING_PORTS, SHARED_SECRET, encode, payload, signed

URL = "/api/webhooks/email"


def post(client: testing.TestClient, body: bytes, headers: dict[str, str] | None = None) -> testing.Result:
    return client.simulate_post(URL, body=body, headers=signed(body) if headers is None else headers)


def assert_nothing_stored_or_dispatched(runtime: Runtime, rabbit: Rabbit) -> None:
    assert stored_events(runtime) == []
    assert run_count(runtime) == 0
    assert queued_messages(rabbit, DRAIN_QUEUE) == 0


def assert_error(result: testing.Result, status: int, code: str) -> dict[str, Any]:
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code
    return error  # type: ignore[no-any-return]


def test_an_event_signed_by_the_reference_library_is_stored_then_queued(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    body = encode(payload("evt-1", email="Lead@Example.com"))
    result = client.simulate_post(URL, body=body, headers={**signed(body), "X-Correlation-Id": "wh-cid-1"})
    assert result.status_code == 202, result.text
    assert result.json == {"id": result.json["id"], "queued": True}
    [event] = stored_events(web_runtime)
    assert event.id == result.json["id"]
    assert (event.provider, event.provider_event_id, event.event_type) == ("email", "evt-1", "EMAIL_SENT")
    assert event.lead_ref == "lead@example.com"
    assert event.body == body.decode() and event.status == "pending" and event.queued_at is not None
    assert event.headers["webhook-id"] == "msg_1" and "webhook-signature" not in event.headers
    run = web_runtime.ledger.get(f"webhook-drain:{event.id}")
    assert run is not None and run.status == "queued" and run.correlation_id == "wh-cid-1"
    assert run.params == {"event_id": event.id}
    assert queued_messages(rabbit, DRAIN_QUEUE) == 1


def test_a_one_byte_change_to_a_signed_body_is_401_and_nothing_is_stored(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    body = encode(payload("evt-1"))
    headers = signed(body)
    tampered = body.replace(b"evt-1", b"evt-2")
    assert len(tampered) == len(body)
    assert_error(post(client, tampered, headers), 401, "unauthorized")
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


@pytest.mark.parametrize("fault", ["no-headers", "stale", "future", "garbage-signature", "wrong-secret"])
def test_bad_or_missing_signature_or_stale_timestamp_is_401(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit, fault: str
) -> None:
    body = encode(payload("evt-1"))
    headers = {
        "no-headers": {"content-type": "application/json"},
        "stale": signed(body, at=datetime.now(UTC) - timedelta(minutes=6)),
        "future": signed(body, at=datetime.now(UTC) + timedelta(minutes=6)),
        "garbage-signature": {**signed(body), "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl"},
        "wrong-secret": signed(body, secret="whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"),
    }[fault]
    assert_error(post(client, body, headers), 401, "unauthorized")
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


def test_a_body_over_the_cap_is_413_by_its_content_length_without_reading_it(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    cap = web_runtime.settings.webhook_body_cap_bytes
    stream = Unreadable()
    extras = {"wsgi.input": stream}
    result = client.simulate_post(URL, headers={"content-length": str(cap + 1)}, body=None, extras=extras)
    error = assert_error(result, 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": cap}
    assert stream.read_bytes == 0
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


def test_a_body_without_length_is_not_read_past_the_cap(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    cap = web_runtime.settings.webhook_body_cap_bytes
    stream = Counting(b"x" * (cap * 4))
    extras = {"wsgi.input": stream, "wsgi.input_terminated": True}
    result = client.simulate_post(URL, body=None, extras=extras, headers={"transfer-encoding": "chunked"})
    assert_error(result, 413, "payload_too_large")
    assert stream.read_bytes <= cap + 1
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


def test_a_body_at_the_cap_is_read(client: testing.TestClient, web_runtime: Runtime) -> None:
    cap = web_runtime.settings.webhook_body_cap_bytes
    body = payload("evt-big")
    body["lead"]["note"] = ""
    body["lead"]["note"] = "n" * (cap - len(encode(body)))
    raw = encode(body)
    assert len(raw) == cap
    assert post(client, raw).status_code == 202


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b"\xff\xfe{}", b"", encode(payload("e"))[:-1] + b', "score": NaN}', b"[Infinity]"],
    ids=["truncated", "text", "binary", "empty", "nan", "infinity"],
)
def test_malformed_json_is_400_and_nothing_is_stored(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit, raw: bytes
) -> None:
    assert_error(post(client, raw), 400, "malformed_json")
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ([], ["(body)"]),
        ({"workspace_id": "w"}, ["event"]),
        ({"event": {"id": "", "type": "EMAIL_SENT"}, "workspace_id": "w"}, ["event.id"]),
        ({**payload("e"), "lead": {"email": "not-an-email"}}, ["lead.email"]),
        ({**payload("e"), "message": {"id": "m", "at": "yesterday"}}, ["message.at"]),
        ({"event": {"id": "e", "type": "EMAIL_SENT"}, "workspace_id": "w"}, ["(body)"]),
        ({"event": {"type": 5}, "workspace_id": ""}, ["event.id", "event.type", "workspace_id"]),
        (payload("e\u0000vil"), ["event.id", "message.id"]),
        ({**payload("e"), "event": {"id": "e", "type": "EMAIL_\u001bSENT"}}, ["event.type"]),
        (payload("e", email="lead\u0000@example.com"), ["lead.email"]),
        (
            {**payload("e"), "lead": {"email": "a@example.com", "first_name": "A\u0000da"}},
            ["lead.first_name"],
        ),
        (
            {**payload("e"), "message": {"id": "m", "at": "2026-01-05T09:00:00Z", "subject": "\u0000"}},
            ["message.subject"],
        ),
        ({**payload("e"), "message": {"id": "m", "at": "2026-01-05T09:00:00"}}, ["message.at"]),
        (
            {**payload("e"), "event": {"id": "e", "type": "X", "created_at": "2026-01-05 09:00"}},
            ["event.created_at"],
        ),
        # 320 characters, but 638 lower-cased: the address events are ordered by must fit its column
        (payload("e", email="\u0130" * 318 + "@x"), ["lead.email"]),
        ({**payload("e"), "lead": {"email": "a@example.com", "first_name": "N" * 201}}, ["lead.first_name"]),
        (
            {**payload("e"), "message": {"id": "m", "at": "2026-01-05T09:00:00Z", "thread_id": "t" * 301}},
            ["message.thread_id"],
        ),
        # the store keeps times in UTC, and the handlers count days from them
        ({**payload("e"), "message": {"id": "m", "at": "9999-12-31T23:59:59-05:00"}}, ["message.at"]),
        ({**payload("e"), "message": {"id": "m", "at": "9999-12-31T00:00:00Z"}}, ["message.at"]),
        (
            {**payload("e"), "event": {"id": "e", "type": "X", "created_at": "0001-01-01T00:00:00+05:00"}},
            ["event.created_at"],
        ),
    ],
    ids=[
        "array",
        "no-event",
        "empty-id",
        "bad-email",
        "bad-date",
        "sent-without-lead",
        "several",
        "nul-in-id",
        "control-in-type",
        "nul-in-email",
        "nul-in-name",
        "nul-in-subject",
        "time-without-offset",
        "created-without-offset",
        "email-longer-lower-cased",
        "name-longer-than-its-column",
        "thread-longer-than-its-column",
        "time-past-the-last-utc-year",
        "time-past-2200",
        "created-before-the-first-utc-year",
    ],
)
def test_wrong_shape_is_422_with_the_field_paths_and_nothing_is_stored(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit, body: Any, paths: list[str]
) -> None:
    error = assert_error(post(client, json.dumps(body).encode()), 422, "invalid_payload")
    assert [d["path"] for d in error["details"]] == paths
    assert all(d["message"] for d in error["details"])
    assert_nothing_stored_or_dispatched(web_runtime, rabbit)


def test_a_duplicate_event_id_answers_200_duplicate_and_is_queued_once(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    body = encode(payload("evt-dup"))
    first = post(client, body)
    assert first.status_code == 202
    again = post(client, encode(payload("evt-dup", email="other@example.com")))
    assert again.status_code == 200
    assert again.json == {"id": first.json["id"], "duplicate": True}
    assert len(stored_events(web_runtime)) == 1
    assert run_count(web_runtime, "webhook-drain") == 1
    assert queued_messages(rabbit, DRAIN_QUEUE) == 1


def test_a_concurrent_burst_repeating_event_ids_stores_and_queues_each_event_once(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    """Concurrent requests, some racing on one event id: each event is stored, queued and answered once."""
    event_ids = [f"evt-burst-{i % 12}" for i in range(36)]  # each event three times, interleaved
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda event_id: post(client, encode(payload(event_id))), event_ids))
    assert sorted(r.status_code for r in results) == [200] * 24 + [202] * 12
    accepted = {
        r.json["id"]: event_id for r, event_id in zip(results, event_ids, strict=True) if r.status_code == 202
    }
    assert all(r.json == {"id": r.json["id"], "queued": True} for r in results if r.status_code == 202)
    for r, event_id in zip(results, event_ids, strict=True):
        if r.status_code == 200:
            assert r.json == {"id": r.json["id"], "duplicate": True} and accepted[r.json["id"]] == event_id
    stored = {e.id: e.provider_event_id for e in stored_events(web_runtime)}
    assert stored == accepted
    for row_id in stored:
        run = web_runtime.ledger.get(f"webhook-drain:{row_id}")
        assert run is not None and run.status == "queued" and run.params == {"event_id": row_id}
    assert run_count(web_runtime, "webhook-drain") == 12
    assert queued_messages(rabbit, DRAIN_QUEUE) == 12


def test_an_unknown_event_type_is_stored_and_marked_ignored(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    result = post(client, encode(payload("evt-open", type="EMAIL_OPENED")))
    assert result.status_code == 202
    assert result.json == {"id": result.json["id"], "queued": False, "ignored": True}
    [event] = stored_events(web_runtime)
    assert event.status == "ignored" and "EMAIL_OPENED" in (event.status_reason or "")
    assert run_count(web_runtime) == 0 and queued_messages(rabbit, DRAIN_QUEUE) == 0


def test_an_inline_event_type_is_processed_in_the_request_after_it_is_stored(
    settings: Settings, rabbit: Rabbit
) -> None:
    inline = with_secrets(settings, webhook_inline_types=frozenset({"EMAIL_SENT"}))
    runtime = build(inline, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        client = testing.TestClient(make_app(runtime))
        sent = post(client, encode(payload("evt-inline")))
        assert sent.status_code == 200, sent.text
        assert sent.json == {"id": sent.json["id"], "queued": False, "inline": True, "status": "processed"}
        assert effects_of(runtime, "evt-inline") == 1
        run = runtime.ledger.get(f"webhook-drain:{sent.json['id']}")
        assert run is not None and run.mode == "inline" and run.status == "succeeded"
        replied = post(client, encode(payload("evt-queued", type="LEAD_REPLIED")))
        assert replied.status_code == 202 and replied.json["queued"] is True
        assert effects_of(runtime, "evt-queued") == 0
        assert queued_messages(rabbit, DRAIN_QUEUE) == 1
    finally:
        runtime.close()


def test_the_shared_secret_header_works_when_no_signing_secret_is_set(settings: Settings) -> None:
    shared = with_secrets(
        settings, webhook_signing_secret=None, webhook_shared_secret=SecretStr(SHARED_SECRET)
    )
    runtime = build(shared, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        client = testing.TestClient(make_app(runtime))
        body = encode(payload("evt-shared"))
        assert_error(post(client, body, {"X-Webhook-Secret": "nope-nope-nope-nope"}), 401, "unauthorized")
        assert post(client, body, {"X-Webhook-Secret": SHARED_SECRET}).status_code == 202
    finally:
        runtime.close()


def test_without_any_webhook_secret_the_endpoint_refuses_with_503(settings: Settings) -> None:
    runtime = build(with_secrets(settings, webhook_signing_secret=None), registry=TEST_REGISTRY)
    try:
        body = encode(payload("evt-1"))
        assert_error(post(testing.TestClient(make_app(runtime)), body), 503, "not_configured")
        assert stored_events(runtime) == []
    finally:
        runtime.close()


def test_unknown_routes_and_methods_answer_in_the_error_shape(client: testing.TestClient) -> None:
    assert_error(client.simulate_get("/api/nothing"), 404, "not_found")
    result = client.simulate_get(URL)
    assert_error(result, 405, "method_not_allowed")
    assert "POST" in result.headers["allow"]


class Counting(io.BytesIO):
    """A request body that counts what the app read of it."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


class Unreadable(Counting):
    def __init__(self) -> None:
        super().__init__(b"")

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("the body was read although its length is over the cap")
