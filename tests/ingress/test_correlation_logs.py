"""What the app logs while serving a request carries the request's correlation id."""

from __future__ import annotations

from datetime import UTC, datetime

from falcon import testing

from actors import log_ids
from offload.wiring import Runtime
from tests.ingress.conftest import AUTH
from tests.support.logs import captured_logs

JOB = "test-cron-record"


def test_a_request_logs_with_the_callers_correlation_id_and_clears_it_after(
    client: testing.TestClient, web_runtime: Runtime
) -> None:
    now = datetime.now(UTC)
    web_runtime.dispatcher.clock = lambda: now  # one slot: the second trigger is a logged duplicate
    assert client.simulate_post(f"/api/cron/{JOB}", headers=AUTH).status_code == 202
    with captured_logs(logger="actors.dispatch") as out:
        again = client.simulate_post(f"/api/cron/{JOB}", headers={**AUTH, "X-Correlation-Id": "cid-web-1"})
    assert again.status_code == 202 and again.json["dispatch"]["duplicate"] is True
    key = again.json["dispatch"]["dispatchKey"]
    assert f" actors.dispatch [cid-web-1 -]: Duplicate dispatch of {key!r}" in out.getvalue()
    assert log_ids.correlation_id.get() is None
