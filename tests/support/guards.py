"""The guard middleware driven by hand, on a fake clock, with a broker that records what it is sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from actors import attempt
from actors.concurrency_cap import ConcurrencyCap
from actors.dedup import Dedup
from actors.retries import Retries
from actors.status_ledger import StatusLedger
from store.ledger import SqlLedger


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, 12, 0, tzinfo=UTC))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def ms(self) -> int:
        return int(self.now.timestamp() * 1000)


class RecordingBroker:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.sent: list[tuple[Any, int | None]] = []

    def get_actor(self, name: str) -> Any:
        return self.real.get_actor(name)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        message = getattr(message, "_message", message)
        self.sent.append((message, delay))
        return message


class Guards:
    def __init__(self, runtime: Any, clock: Clock, monkeypatch: Any) -> None:
        monkeypatch.setattr(attempt, "now_ms", clock.ms)
        self.ledger = SqlLedger(runtime.engine, clock=lambda: clock.now)
        self.broker = RecordingBroker(runtime.broker)
        self.front = [
            Dedup(ledger=self.ledger),
            ConcurrencyCap(leases=self.ledger.leases),
            StatusLedger(ledger=self.ledger),
        ]
        self.retries = Retries()

    def deliver(self, message: Any, *, body: Any = None) -> MessageProxy:
        """Before-hooks; if none skips, run `body` (an exception it raises goes through Retries)."""
        proxy = MessageProxy(message)
        try:
            for m in self.front:
                m.before_process_message(self.broker, proxy)
        except SkipMessage:
            for m in reversed(self.front):
                m.after_skip_message(self.broker, proxy)
            return proxy
        exception = None
        try:
            if body is not None:
                body(proxy)
        except Exception as e:
            exception = e
        for m in [self.retries, *reversed(self.front)]:  # a failing after-hook fails the test
            m.after_process_message(self.broker, proxy, exception=exception)
        return proxy


def before_only(g: Guards, message: Any) -> MessageProxy:
    """The before-hooks alone: the worker is SIGKILLed once the actor body has started."""
    proxy = MessageProxy(message)
    for m in g.front:
        m.before_process_message(g.broker, proxy)
    attempt.current.set(None)
    return proxy
