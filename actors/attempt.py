"""Per-delivery state shared by the guard middleware and the actor body of one worker thread."""

from __future__ import annotations

import os
import socket
import time
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from store import db
from store.errors import StoreError
from store.ledger import NewRun, Worker

#: The attempt the current worker thread is running, set by Dedup for the actor body.
current: ContextVar[Attempt | None] = ContextVar("offload_attempt", default=None)

DEFAULT_LEASE_GRACE_S = 30.0
#: Used only when an actor declares no option of its own (every offload actor does).
DEFAULT_LEASE_S = 600.0 + DEFAULT_LEASE_GRACE_S
DEFAULT_MAX_WAIT_MS = 3_600_000
#: How long a message waits before trying again when the store cannot be reached.
STORE_RETRY_DELAY_MS = 5_000


@dataclass
class Attempt:
    """What the guards learned about one delivery of one message.

    `guard` is the transaction that claims the run and takes its slot: Dedup opens it,
    ConcurrencyCap adds to it (or rolls it back when no slot is free), StatusLedger commits it.
    `verdict` is set when a guard stops the message: (status, detail) for StatusLedger to record.
    """

    key: str
    job: str
    token: str | None = None
    guard: Connection | None = None
    holds_slot: bool = False
    verdict: tuple[str, str] | None = None

    def give_back(self) -> None:
        """Roll the uncommitted claim (and slot) back: this delivery never started the job."""
        guard, self.guard, self.token, self.holds_slot = self.guard, None, None, False
        if guard is not None:
            with suppress(StoreError):  # the server rolls back a transaction whose connection is gone
                db.end(guard, commit=False)


def of(broker: Any, message: Any) -> Attempt:
    """The attempt of a message proxy, created on first use."""
    attempt: Attempt | None = getattr(message, "_offload_attempt", None)
    if attempt is None:
        attempt = Attempt(key=message.args[0], job=option(broker, message, "job", message.actor_name))
        message._offload_attempt = attempt
    return attempt


def option(broker: Any, message: Any, name: str, default: Any) -> Any:
    """An option of the message, else of its actor, else `default` (dramatiq's lookup order)."""
    if name in message.options:
        return message.options[name]
    return broker.get_actor(message.actor_name).options.get(name, default)


def this_worker() -> Worker:
    return Worker(host=socket.gethostname(), pid=os.getpid())


def new_run(broker: Any, message: Any) -> NewRun:
    """The ledger row a message stands for, used when a message arrives for a key never recorded."""
    key, params = message.args[0], message.args[1] if len(message.args) > 1 else {}
    return NewRun(
        job=option(broker, message, "job", message.actor_name),
        dispatch_key=key,
        message_id=message.message_id,
        correlation_id=message.options.get("correlation_id") or message.message_id,
        trigger=message.options.get("trigger", "cli"),
        mode="queue",
        slot=None,
        params=params,
    )


def now_ms() -> int:
    return int(time.time() * 1000)
