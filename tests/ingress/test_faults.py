"""RabbitMQ and the database going away under the ingress (through cuttable proxies, never the servers)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest
from falcon import testing

from offload.settings import Settings
from offload.web import make_app
from offload.wiring import build
from tests.ingress.conftest import AUTH, effects_of, stored_events, with_secrets
from tests.services import Postgres, Rabbit
from tests.support.jobs import TEST_REGISTRY
from tests.support.procs import Workers, reset_postgres, wait_for
from tests.support.proxy import Proxy
from tests.support.webhooks import RECORDING_PORTS, encode, payload, signed


def through(proxy: Proxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def post_event(client: testing.TestClient, event_id: str, **kw: str) -> testing.Result:
    body = encode(payload(event_id, **kw))
    return client.simulate_post("/api/webhooks/email", body=body, headers=signed(body))


@pytest.fixture
def rabbit_proxy() -> Iterator[Proxy]:
    host, port = urlsplit(Rabbit().url).netloc.rsplit("@", 1)[1].split(":")
    proxy = Proxy(host, int(port))
    yield proxy
    proxy.close()


def test_with_rabbitmq_down_cron_is_503_webhooks_are_kept_and_the_sweeper_drains_each_once(
    settings: Settings, rabbit_proxy: Proxy, workers: Workers
) -> None:
    proxied = with_secrets(settings, broker_url=through(rabbit_proxy, settings.broker_url))
    runtime = build(proxied, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        client = testing.TestClient(make_app(runtime))
        rabbit_proxy.cut()

        cron = client.simulate_get("/api/cron/test-cron-record", headers=AUTH)
        assert cron.status_code == 503, cron.text
        error = cron.json["error"]
        assert error["code"] == "broker_unavailable" and "RabbitMQ at amqp://" in error["message"]
        assert error["details"]["broker"].startswith("RabbitMQ at amqp://guest:***@")
        [run] = runtime.ledger.runs(job="test-cron-record")
        assert run.status == "failed" and run.mode == "queue"
        assert any("enqueue failed" in (e.detail or "") for e in runtime.ledger.events(run.dispatch_key))
        assert effects_of(runtime, run.dispatch_key) == 0  # nothing ran inline

        answers = [
            post_event(client, "evt-a1", email="a@example.com"),
            post_event(client, "evt-b1", email="b@example.com"),
            post_event(client, "evt-a2", email="a@example.com", type="LEAD_REPLIED"),
        ]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert all(a.json["queued"] is False for a in answers)
        # The first failed publish pauses publishing: the others are stored without trying the broker.
        drains = runtime.ledger.runs(job="webhook-drain")
        assert [(r.status, r.params) for r in drains] == [
            ("failed", {"event_id": stored_events(runtime)[0].id})
        ]
        events = stored_events(runtime)
        assert [(e.provider_event_id, e.status, e.queued_at) for e in events] == [
            ("evt-a1", "pending", None),
            ("evt-b1", "pending", None),
            ("evt-a2", "pending", None),
        ]

        rabbit_proxy.restore()
        workers.start(threads=4, OFFLOAD_TEST_WEBHOOK_HANDLERS="record")
        swept = runtime.dispatcher.dispatch(
            "webhook-sweeper", trigger="cli", params={"older_than_s": 0}, inline=True
        )
        assert swept.result == {
            "found": 3,
            "requeued": 3,
            "carried": 0,
            "publish_failed": False,
            "has_more": False,
        }
        wait_for(
            lambda: all(e.status == "processed" for e in stored_events(runtime)),
            timeout_s=60,
            what="every stored event to be processed",
        )
        for event_id in ("evt-a1", "evt-b1", "evt-a2"):
            assert effects_of(runtime, event_id) == 1
        a1, _, a2 = stored_events(runtime)
        assert a1.processed_at < a2.processed_at  # type: ignore[operator]
        again = runtime.dispatcher.dispatch(
            "webhook-sweeper", trigger="cli", params={"older_than_s": 0, "requeue_after_s": 0}, inline=True
        )
        assert again.result is not None and again.result["found"] == 0

        retriggered = client.simulate_get("/api/cron/test-cron-record", headers=AUTH)
        assert retriggered.status_code == 202 and retriggered.json["dispatch"]["duplicate"] is False
        key = retriggered.json["dispatch"]["dispatchKey"]
        wait_for(lambda: effects_of(runtime, key) == 1, what="the re-triggered cron run")
    finally:
        runtime.close()


@pytest.fixture
def pg_proxy(postgres: Postgres) -> Iterator[Proxy]:
    reset_postgres(postgres.url)
    proxy = Proxy("127.0.0.1", urlsplit(postgres.url).port or 5432)
    yield proxy
    proxy.close()


def test_with_the_database_down_webhooks_are_503_and_nothing_unstored_is_acknowledged(
    postgres: Postgres, rabbit: Rabbit, pg_proxy: Proxy
) -> None:
    rabbit.delete_queues()
    settings = with_secrets(
        Settings(database_url=through(pg_proxy, postgres.url), broker_url=rabbit.url, lease_grace_s=2.0)
    )
    runtime = build(settings, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        client = testing.TestClient(make_app(runtime))
        assert post_event(client, "evt-before").status_code == 202

        pg_proxy.cut()
        down = post_event(client, "evt-during")
        assert down.status_code == 503, down.text
        assert down.json["error"]["code"] == "database_unavailable"
        ready = client.simulate_get("/readyz")
        assert ready.status_code == 503
        checks = ready.json["error"]["details"]["checks"]
        assert checks["broker"] == "ok" and checks["database"].startswith("unreachable")
        cron = client.simulate_get("/api/cron/test-cron-record", headers=AUTH)
        assert cron.status_code == 503 and cron.json["error"]["code"] == "database_unavailable"

        pg_proxy.restore()
        assert post_event(client, "evt-during").status_code == 202
        assert [e.provider_event_id for e in stored_events(runtime)] == ["evt-before", "evt-during"]
        assert client.simulate_get("/readyz").status_code == 200
    finally:
        runtime.close()


def test_a_database_cut_during_a_burst_never_acknowledges_an_unstored_event(
    postgres: Postgres, rabbit: Rabbit, pg_proxy: Proxy
) -> None:
    rabbit.delete_queues()
    settings = with_secrets(
        Settings(database_url=through(pg_proxy, postgres.url), broker_url=rabbit.url, lease_grace_s=2.0)
    )
    runtime = build(settings, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    client = testing.TestClient(make_app(runtime))
    sent = 0
    lock = threading.Lock()

    def send(i: int) -> tuple[str, int]:
        nonlocal sent
        with lock:
            sent += 1
            if sent == 15:
                pg_proxy.cut()
            if sent == 45:
                pg_proxy.restore()
        result = post_event(client, f"evt-{i}", email=f"lead{i % 5}@example.com")
        return f"evt-{i}", result.status_code

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(send, range(60)))
        acknowledged = {event_id for event_id, status in outcomes if 200 <= status < 300}
        refused = {event_id for event_id, status in outcomes if status == 503}
        assert acknowledged | refused == {event_id for event_id, _ in outcomes}
        assert refused, "the cut should have refused some events"
        assert acknowledged, "events outside the cut should be accepted"
        stored = {e.provider_event_id for e in stored_events(runtime)}
        assert acknowledged <= stored
    finally:
        runtime.close()
