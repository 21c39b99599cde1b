"""The cron trigger routes through falcon.testing, over real RabbitMQ and both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pika
import pytest
from falcon import testing

from offload.settings import Settings
from offload.web import make_app
from offload.wiring import Runtime, build
from tests.ingress.conftest import AUTH, queued_messages, run_count, with_secrets
from tests.services import Rabbit
from tests.support.jobs import TEST_REGISTRY
from tests.support.procs import Workers, wait_for
from tests.support.webhooks import RECORDING_PORTS

JOB = "test-cron-record"
QUEUE = f"offload.{JOB}"
SLOT_TIME = datetime(2026, 3, 4, 10, 7, 30, tzinfo=UTC)


def assert_error(result: testing.Result, status: int, code: str) -> dict[str, object]:
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code and error["message"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-secret-0123456789"}, {"Authorization": "Basic abc"}],
    ids=["missing", "wrong", "other-scheme"],
)
def test_missing_or_wrong_cron_secret_is_401_and_dispatches_nothing(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit, headers: dict[str, str]
) -> None:
    result = client.simulate_get(f"/api/cron/{JOB}", headers=headers)
    assert_error(result, 401, "unauthorized")
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert run_count(web_runtime) == 0
    assert queued_messages(rabbit, QUEUE) == 0


def test_without_a_configured_secret_the_routes_refuse_with_503(settings: Settings, rabbit: Rabbit) -> None:
    runtime = build(with_secrets(settings, cron_secret=None), registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        result = testing.TestClient(make_app(runtime)).simulate_get(f"/api/cron/{JOB}", headers=AUTH)
        error = assert_error(result, 503, "not_configured")
        assert "CRON_SECRET" in str(error["message"])
        assert run_count(runtime) == 0
    finally:
        runtime.close()


def test_unknown_job_is_404_listing_the_known_jobs(client: testing.TestClient, web_runtime: Runtime) -> None:
    error = assert_error(client.simulate_post("/api/cron/no-such-job", headers=AUTH), 404, "unknown_job")
    assert error["details"] == {"known_jobs": TEST_REGISTRY.names}
    assert run_count(web_runtime) == 0


def test_queue_mode_answers_202_with_the_dispatch_and_publishes_once(
    client: testing.TestClient, web_runtime: Runtime, rabbit: Rabbit
) -> None:
    web_runtime.dispatcher.clock = lambda: SLOT_TIME
    first = client.simulate_get(f"/api/cron/{JOB}", headers={**AUTH, "X-Correlation-Id": "cid-from-caller"})
    assert first.status_code == 202
    assert first.headers["x-correlation-id"] == "cid-from-caller"
    dispatch = first.json["dispatch"]
    assert first.json["success"] is True
    assert {"mode", "job", "dispatchKey", "messageId", "correlationId", "slot", "duplicate", "status"} <= set(
        dispatch
    )
    assert dispatch["mode"] == "queue" and dispatch["job"] == JOB
    assert dispatch["duplicate"] is False and dispatch["status"] == "queued"
    assert dispatch["slot"] == "2026-03-04T10:05:00+00:00"
    assert dispatch["correlationId"] == "cid-from-caller"

    again = client.simulate_post(f"/api/cron/{JOB}", headers=AUTH)
    assert again.status_code == 202
    assert again.json["dispatch"]["duplicate"] is True
    assert again.json["dispatch"]["dispatchKey"] == dispatch["dispatchKey"]
    assert again.json["dispatch"]["status"] == "queued"

    run = web_runtime.ledger.get(dispatch["dispatchKey"])
    assert run is not None and run.correlation_id == "cid-from-caller" and run.trigger == "http"
    assert run.duplicates == 1
    assert queued_messages(rabbit, QUEUE) == 1
    message = read_one(rabbit, QUEUE)
    assert message["message_id"] == dispatch["messageId"]
    assert message["options"]["correlation_id"] == "cid-from-caller"
    assert message["args"][0] == dispatch["dispatchKey"]


def test_a_correlation_id_is_generated_when_absent_or_unusable(
    client: testing.TestClient, web_runtime: Runtime
) -> None:
    web_runtime.dispatcher.clock = lambda: SLOT_TIME
    for header in ({}, {"X-Correlation-Id": "bad id with spaces"}, {"X-Correlation-Id": "x" * 200}):
        result = client.simulate_get(f"/api/cron/{JOB}", headers={**AUTH, **header})
        cid = result.headers["x-correlation-id"]
        assert len(cid) == 32 and cid != header.get("X-Correlation-Id")
    first = client.simulate_get("/healthz").headers["x-correlation-id"]
    assert first != client.simulate_get("/healthz").headers["x-correlation-id"]


def test_inline_mode_answers_200_with_the_jobs_result(settings: Settings, rabbit: Rabbit) -> None:
    runtime = build(
        with_secrets(settings, inline_jobs=frozenset({JOB})), registry=TEST_REGISTRY, ports=RECORDING_PORTS
    )
    try:
        client = testing.TestClient(make_app(runtime))
        result = client.simulate_get(f"/api/cron/{JOB}", headers=AUTH)
        assert result.status_code == 200, result.text
        assert result.json["success"] is True
        assert result.json["result"] == {"recorded": 1}
        assert result.json["dispatch"]["mode"] == "inline"
        assert result.json["dispatch"]["status"] == "succeeded"
        assert queued_messages(rabbit, QUEUE) == 0
    finally:
        runtime.close()


def test_an_inline_run_that_fails_answers_500_with_the_dispatch(settings: Settings) -> None:
    runtime = build(with_secrets(settings, inline=True), registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    try:
        result = testing.TestClient(make_app(runtime)).simulate_post("/api/cron/test-explode", headers=AUTH)
        error = assert_error(result, 500, "job_failed")
        details = error["details"]
        assert isinstance(details, dict) and details["dispatch"]["status"] == "failed"
        run = runtime.ledger.get(details["dispatch"]["dispatchKey"])
        assert run is not None and run.error_type == "RuntimeError"
    finally:
        runtime.close()


def test_a_queued_cron_run_is_executed_by_a_worker(
    client: testing.TestClient, web_runtime: Runtime, workers: Workers
) -> None:
    key = client.simulate_get(f"/api/cron/{JOB}", headers=AUTH).json["dispatch"]["dispatchKey"]
    workers.start(threads=2)
    wait_for(lambda: (r := web_runtime.ledger.get(key)) and r.status == "succeeded", what="the run")


def read_one(rabbit: Rabbit, queue: str) -> dict[str, object]:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        method, _, body = conn.channel().basic_get(queue, auto_ack=False)
        assert method is not None
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()
