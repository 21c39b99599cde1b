"""Per-delivery state shared by the guard middleware and the actor body of one worker thread."""

from __future__ import annotations

import os
import socket
import time
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any

from domain.runs import Mode, Trigger
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

    Dedup claims the run and a slot of its job in one write: `token` and `holds_slot` are set when
    it did, `capped` when the run could start but every slot was held (ConcurrencyCap decides what
    that means), with `seen_attempts`, the run's attempts then. `verdict` is set when a guard stops
    the message: (status, detail) for StatusLedger.
    """

    key: str
    job: str
    token: str | None = None
    holds_slot: bool = False
    capped: bool = False
    seen_attempts: int | None = None
    verdict: tuple[str, str] | None = None


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
    """This process's host and pid (a forked child has its own)."""
    return _worker_of(os.getpid())


@cache
def _worker_of(pid: int) -> Worker:
    return Worker(host=socket.gethostname(), pid=pid)


def new_run(broker: Any, message: Any) -> NewRun:
    """The ledger row a message stands for, used when a message arrives for a key never recorded."""
    key, params = message.args[0], message.args[1] if len(message.args) > 1 else {}
    return NewRun(
        job=option(broker, message, "job", message.actor_name),
        dispatch_key=key,
        message_id=message.message_id,
        correlation_id=message.options.get("correlation_id") or message.message_id,
        trigger=message.options.get("trigger", Trigger.CLI),
        mode=Mode.QUEUE,
        slot=None,
        params=params,
    )


def now_ms() -> int:
    return int(time.time() * 1000)
