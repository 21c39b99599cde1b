"""Dedup: at most one successful run per dispatch key, and never two holders of a key at once."""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.middleware import Middleware, SkipMessage

from actors import attempt
from actors.defer import DEFERRALS, WAITING_SINCE, defer
from store.errors import StoreError
from store.ledger import SqlLedger


class Dedup(Middleware):
    """Claim the message's dispatch key on the ledger, with a slot of its job's cap, before the actor runs.

    The claim and the slot are one committed write (`SqlLedger.claim`: one statement on
    PostgreSQL), so no job starts without both and a wait for a slot is never an attempt. When
    every slot is held, ConcurrencyCap decides whether the message waits or is skipped.

    A key that already succeeded is skipped and counted as a duplicate. A key held by a live
    attempt elsewhere (a second copy of the message) is deferred until that lease can expire. A
    key whose holder died is taken over, and the ledger records `lost`. A key that crashed its
    worker more than `max_retries` times is declared `dead` and dead-lettered.

    Parameters:
      ledger: the status ledger.
      busy_delay_ms: the longest a second copy waits before looking again.
    """

    def __init__(self, *, ledger: SqlLedger, busy_delay_ms: int = attempt.STORE_RETRY_DELAY_MS) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.ledger = ledger
        self.busy_delay_ms = busy_delay_ms

    def before_process_message(self, broker: Any, message: Any) -> None:
        state = attempt.of(broker, message)
        max_wait_ms = attempt.option(broker, message, "max_wait_ms", attempt.DEFAULT_MAX_WAIT_MS)
        try:
            claim = self.ledger.claim(
                attempt.new_run(broker, message),
                cap=attempt.option(broker, message, "concurrency_cap", 1),
                lease_s=attempt.option(broker, message, "lease_s", attempt.DEFAULT_LEASE_S),
                worker=attempt.this_worker(),
                max_attempts=attempt.option(broker, message, "max_retries", 20) + 1,
            )
        except StoreError as e:
            defer(
                broker,
                message,
                delay_ms=self.busy_delay_ms,
                max_wait_ms=max_wait_ms,
                status="deferred",
                detail=f"store unavailable: {e}",
            )
        if claim.outcome == "claimed":
            # A wait ends with the claim: a retry of this attempt, re-enqueued with these options,
            # waits on a clock of its own.
            message.options.pop(WAITING_SINCE, None)
            message.options.pop(DEFERRALS, None)
            state.token, state.holds_slot = claim.token, True
            attempt.current.set(state)
            return
        if claim.outcome == "capped":
            state.capped, state.seen_attempts = True, claim.attempt
            return
        assert claim.run is not None, "a refused claim says why"
        if claim.outcome == "busy":
            assert claim.run.lease_expires_at is not None
            # The lease's end by this host's clock: the ledger stamps it by the database's.
            left = claim.run.lease_expires_at - self.ledger.now()
            lease_end_ms = attempt.now_ms() + int(left.total_seconds() * 1000)
            # Waiting for a live holder is not counted: a redelivered copy of a message whose worker
            # died carries the stamp of any wait it had before it claimed, and must outlast the lease.
            defer(
                broker,
                message,
                delay_ms=max(100, min(self.busy_delay_ms, lease_end_ms - attempt.now_ms() + 100)),
                max_wait_ms=max_wait_ms,
                status="running",
                detail="another attempt holds the key",
                free_until_ms=lease_end_ms,
            )
        if claim.outcome == "exhausted":
            message.fail()
        state.verdict = (claim.outcome, f"run is {claim.run.status}")
        raise SkipMessage(state.verdict[1])

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        attempt.current.set(None)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        attempt.current.set(None)
