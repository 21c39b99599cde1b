"""RabbitMQ blocks publishers during a resource alarm: the request path gives up, a worker waits."""

from __future__ import annotations

import time

import pytest
from falcon import testing

from offload.settings import Settings
from offload.wiring import Runtime, build
from tests.ingress.conftest import AUTH, effects_of
from tests.support.alarm import memory_alarm
from tests.support.jobs import TEST_REGISTRY


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the broker is the subject
def test_a_cron_route_answers_503_while_rabbitmq_blocks_publishers(
    web_runtime: Runtime, client: testing.TestClient
) -> None:
    """A disk or memory alarm blocks every publishing connection until it clears: the confirm never
    came, and the request (its waitress thread with it) waited for good."""
    with memory_alarm():
        started = time.monotonic()
        answer = client.simulate_get("/api/cron/test-cron-record", headers=AUTH)
        took = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.json["error"]["code"] == "broker_unavailable"
    assert took < 45
    [run] = web_runtime.ledger.runs(job="test-cron-record")
    assert run.status == "failed" and effects_of(web_runtime, run.dispatch_key) == 0
    # Once the alarm clears, the next trigger of the slot is published.
    again = client.simulate_get("/api/cron/test-cron-record", headers=AUTH)
    assert again.status_code == 202 and again.json["dispatch"]["status"] == "queued", again.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_only_a_worker_waits_out_an_alarm(settings: Settings) -> None:
    """A worker's retries and deferrals would be dead-lettered if their publish gave up."""
    for worker, timeout in ((False, 5), (True, None)):
        runtime = build(settings, registry=TEST_REGISTRY, worker=worker)
        try:
            assert runtime.broker.parameters.blocked_connection_timeout == timeout
        finally:
            runtime.close()
