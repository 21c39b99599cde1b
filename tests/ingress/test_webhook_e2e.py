"""End to end: HTTP -> webhook_events -> RabbitMQ -> workers -> handlers, once each, in lead order."""

from __future__ import annotations

from collections import defaultdict

from falcon import testing

from offload.wiring import Runtime
from tests.ingress.conftest import effects_of, stored_events
from tests.support.procs import Workers, wait_for
from tests.support.webhooks import encode, payload, signed

TYPES = ("EMAIL_SENT", "LEAD_REPLIED", "EMAIL_BOUNCED", "LEAD_UNSUBSCRIBED")


def test_queued_events_are_processed_once_each_in_the_order_of_their_lead(
    client: testing.TestClient, web_runtime: Runtime, workers: Workers
) -> None:
    sent: list[str] = []
    for n in range(12):
        event_id = f"evt-{n}"
        body = encode(payload(event_id, type=TYPES[n // 3 % 4], email=f"lead{n % 3}@example.com"))
        result = client.simulate_post("/api/webhooks/email", body=body, headers=signed(body))
        assert result.status_code == 202 and result.json["queued"] is True
        sent.append(event_id)
    duplicate = encode(payload("evt-0", email="lead0@example.com"))
    assert (
        client.simulate_post("/api/webhooks/email", body=duplicate, headers=signed(duplicate)).status_code
        == 200
    )

    workers.start(threads=4, OFFLOAD_TEST_WEBHOOK_HANDLERS="record")
    wait_for(
        lambda: all(e.status == "processed" for e in stored_events(web_runtime)),
        timeout_s=90,
        what="every event to be processed",
    )
    assert [effects_of(web_runtime, event_id) for event_id in sent] == [1] * 12
    by_lead = defaultdict(list)
    for event in stored_events(web_runtime):
        by_lead[event.lead_ref].append(event)
    for events in by_lead.values():
        processed = [e.processed_at for e in sorted(events, key=lambda e: e.id)]
        assert processed == sorted(processed), "a lead's events were processed out of order"
    runs = web_runtime.ledger.runs(job="webhook-drain", limit=100)
    assert len(runs) == 12 and all(r.status == "succeeded" for r in runs)
