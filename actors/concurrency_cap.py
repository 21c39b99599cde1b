"""ConcurrencyCap: at most N runs of a job at once across every worker process and host."""

from __future__ import annotations

import logging
import random
from typing import Any

from dramatiq.middleware import Middleware, SkipMessage

from actors import attempt
from actors.defer import defer
from store.errors import StoreError
from store.leases import SqlLeases


class ConcurrencyCap(Middleware):
    """Hold one of the job's `concurrency_cap` database leases while the claimed attempt runs.

    Dedup takes the slot in the same write as the claim, so only an attempt that claimed its run
    holds one. A message that finds every slot held (nothing was written) is deferred
    (re-enqueued with a delay, no retry consumed) or, with `overlap="skip"`, ends `skipped`. The
    slot is freed with the run's `succeeded` mark, or here after any other end. A holder that dies
    keeps its slot until the lease expires, except against a later attempt of its own run, which
    takes it over. If the database cannot be reached the message is deferred: nothing runs unguarded.

    Parameters:
      leases: the shared lease store.
      retry_delay_ms: how long a deferred message waits before trying again (plus up to 50% jitter).
    """

    def __init__(self, *, leases: SqlLeases, retry_delay_ms: int = 1_000) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.leases = leases
        self.retry_delay_ms = retry_delay_ms

    @property
    def actor_options(self) -> set[str]:
        return {"job", "concurrency_cap", "overlap", "max_wait_ms", "lease_s"}

    def before_process_message(self, broker: Any, message: Any) -> None:
        state = attempt.of(broker, message)
        if not state.capped:
            return
        detail = f"concurrency cap {attempt.option(broker, message, 'concurrency_cap', 1)} reached"
        if attempt.option(broker, message, "overlap", "defer") == "skip":
            state.verdict = ("skipped", detail)
            raise SkipMessage(detail)
        defer(
            broker,
            message,
            delay_ms=int(self.retry_delay_ms * (1 + random.random() / 2)),
            max_wait_ms=attempt.option(broker, message, "max_wait_ms", attempt.DEFAULT_MAX_WAIT_MS),
            status="deferred",
            detail=detail,
        )

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._release(broker, message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._release(broker, message)

    def _release(self, broker: Any, message: Any) -> None:
        state = attempt.of(broker, message)
        if not state.holds_slot or state.token is None:
            return
        try:
            self.leases.release(state.job, key=state.key, token=state.token)
        except StoreError:
            self.logger.warning(
                "Could not release the slot of %r; it frees when its lease expires.", state.key
            )
        state.holds_slot = False
