"""A deferral's wait is counted from the message's last claim, and never while a live holder has the key.

The guards run by hand on a fake clock (`tests.support.guards`), so an hour of waiting takes no time.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors import attempt
from offload.wiring import Runtime
from store.ledger import NewRun, Worker
from tests.support.guards import Clock, Guards, before_only

OTHER = Worker("other-host", 7)


def _run(job: str, key: str) -> NewRun:
    return NewRun(job, key, key, "c", "cli", "queue", None, {})


def test_a_copy_redelivered_after_a_crash_that_followed_a_long_cap_wait_still_takes_over(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = runtime.registry["test-crashable"]  # cap 1, max_wait 1 h
    actor = runtime.actors["test-crashable"]
    lease_s = runtime.runner.lease_s(spec)
    clock = Clock()
    g = Guards(runtime, clock, monkeypatch)
    key, blocker = "test-crashable:k", "test-crashable:blocker"
    for k in (key, blocker):
        g.ledger.record_dispatch(_run("test-crashable", k))
    held = g.ledger.claim(_run("test-crashable", blocker), cap=1, lease_s=7200, worker=OTHER, max_attempts=4)
    assert held.outcome == "claimed" and held.token is not None
    first = g.deliver(actor.message(key, {}).copy(message_id="m-1"))
    assert not first.failed and len(g.broker.sent) == 1  # deferred: the cap is full
    clock.advance(spec.max_wait_ms / 1000 - 2)  # it waits just under max_wait for its slot
    g.ledger.leases.release("test-crashable", key=blocker, token=held.token)
    delivered = g.broker.sent[-1][0]
    assert attempt.of(g.broker, before_only(g, delivered)).token is not None  # claimed, then SIGKILLed
    # RabbitMQ redelivers the body it holds, the first wait's stamp included.
    redelivered, waited = delivered, 0
    while True:
        clock.advance(1.0)
        waited += 1
        proxy = g.deliver(redelivered)
        state = attempt.of(g.broker, proxy)
        assert not proxy.failed, (
            f"dead-lettered {waited} s after the crash ({lease_s} s lease): {state.verdict}"
        )
        if state.token is not None:
            break
        redelivered = g.broker.sent[-1][0]
    assert waited >= lease_s
    assert [e.status for e in g.ledger.events(key)][-2:] == ["lost", "running"]


def test_a_retry_waits_on_a_clock_of_its_own(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = runtime.registry["test-capped"]  # cap 2, max_wait 1 h
    actor = runtime.actors["test-capped"]
    clock = Clock()
    g = Guards(runtime, clock, monkeypatch)
    key, others = "test-capped:k", ["test-capped:a", "test-capped:b"]
    for k in (key, *others):
        g.ledger.record_dispatch(_run("test-capped", k))

    def fill() -> list[str]:
        claims = [
            g.ledger.claim(_run("test-capped", k), cap=2, lease_s=7200, worker=OTHER, max_attempts=9)
            for k in others
        ]
        return [c.token for c in claims if c.token is not None]

    tokens = fill()
    g.deliver(actor.message(key, {}).copy(message_id="m-1"))  # the cap is full: deferred
    clock.advance(spec.max_wait_ms / 1000 - 60)  # it waits 59 minutes for a slot
    for k, t in zip(others, tokens, strict=True):
        g.ledger.finish(k, "retrying", token=t)
        g.ledger.leases.release("test-capped", key=k, token=t)

    def fails_after_90_s(proxy: Any) -> None:
        clock.advance(90)
        raise RuntimeError("transient")

    claimed = g.deliver(g.broker.sent[-1][0], body=fails_after_90_s)
    assert attempt.of(g.broker, claimed).token is not None and g.ledger.get(key).status == "retrying"
    retry, delay = g.broker.sent[-1]
    fill()  # the slots are held again when the retry comes
    clock.advance((delay or 0) / 1000)
    proxy = g.deliver(retry)
    assert not proxy.failed, attempt.of(g.broker, proxy).verdict
    assert attempt.of(g.broker, proxy).verdict[0] == "deferred"
