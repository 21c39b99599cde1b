"""StatusLedger: records how each delivery ended on the run's ledger row."""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.middleware import Middleware

from actors import attempt
from domain.runs import RunStatus
from store.errors import StoreError
from store.ledger import SqlLedger

#: Verdicts of a guard that stopped a message, which the ledger records.
_STOPPED = frozenset({RunStatus.DEFERRED, RunStatus.SKIPPED, RunStatus.DEAD})


class StatusLedger(Middleware):
    """Write `retrying`, `dead`, `deferred` and `skipped` on the run's ledger row.

    Dedup commits `running` with the claim; `succeeded` is committed by the actor body in the same
    transaction as the job's last unit of work, fenced by the attempt's lease token. Place this
    middleware after ConcurrencyCap and ahead of Retries: its after-hooks then run after Retries
    has decided between another attempt and the dead letter, and before the slot is released.

    Parameters:
      ledger: the status ledger.
    """

    def __init__(self, *, ledger: SqlLedger) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.ledger = ledger

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        state = attempt.of(broker, message)
        if exception is None or state.token is None:
            return
        status = RunStatus.DEAD if message.failed else RunStatus.RETRYING
        self._write(
            state.key, lambda: self.ledger.finish(state.key, status, token=state.token, error=exception)
        )

    def after_skip_message(self, broker: Any, message: Any) -> None:
        state = attempt.of(broker, message)
        if state.verdict is None or state.verdict[0] not in _STOPPED:
            return
        status, detail = RunStatus(state.verdict[0]), state.verdict[1]
        # Fenced by the attempts the claim saw: another copy of the message may have run one since.
        seen = state.seen_attempts
        if status == RunStatus.DEFERRED:
            self._write(state.key, lambda: self.ledger.defer(state.key, detail=detail, attempt=seen))
        else:
            self._write(
                state.key,
                lambda: self.ledger.finish(state.key, status, token=None, attempt=seen, detail=detail),
            )

    def _write(self, key: str, write: Any) -> None:
        try:
            write()
        except (StoreError, LookupError) as e:
            self.logger.warning("Could not record the outcome of %r on the ledger: %s", key, e)
