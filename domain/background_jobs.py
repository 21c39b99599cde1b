"""The `background-jobs` job: drain due rows of the generic background_jobs table."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from domain.context import JobContext
from domain.errors import PermanentError
from domain.params import int_param

#: Seconds a claimed row stays ours before another drain may take it over.
ROW_LEASE_S = 300.0
MIN_BACKOFF_S = 30.0
MAX_BACKOFF_S = 3600.0
_ERROR_CHARS = 1000


def backoff_s(attempt: int) -> float:
    """Exponential backoff after the `attempt`-th failed attempt (1-based), capped."""
    return float(min(MAX_BACKOFF_S, MIN_BACKOFF_S * 2 ** (attempt - 1)))


def drain(ctx: JobContext) -> Mapping[str, Any]:
    """Claim due rows, run each row's handler, retry with backoff and give up after its max attempts.

    A handler runs inside the unit of work's transaction and commits with the row's new status, so
    handlers do database work only; one that calls out should enqueue a job of its own instead.
    """
    limit = int_param(ctx.params, "batch_size", 100)
    uow = ctx.uow
    claimed = uow.background_jobs.claim_due(now=ctx.now, limit=limit, lease_s=ROW_LEASE_S)
    uow.commit()
    done = retried = failed = 0
    for row in claimed:
        handler = ctx.ports.background_handlers.get(row.type)
        try:
            if handler is None:
                raise PermanentError(f"no handler for background job type {row.type!r}")
            handler(uow, row.payload)
        except Exception as e:
            uow.rollback()
            error = f"{type(e).__name__}: {e}"[:_ERROR_CHARS]
            if isinstance(e, PermanentError) or row.attempts >= row.max_attempts:
                uow.background_jobs.mark_failed(row.id, now=ctx.now, error=error)
                failed += 1
            else:
                run_at = ctx.now + timedelta(seconds=backoff_s(row.attempts))
                uow.background_jobs.mark_retry(row.id, run_at=run_at, error=error)
                retried += 1
        else:
            uow.background_jobs.mark_done(row.id, now=ctx.now)
            done += 1
        uow.commit()
    return {
        "claimed": len(claimed),
        "done": done,
        "retried": retried,
        "failed": failed,
        "has_more": len(claimed) == limit,
    }


def noop(uow: Any, payload: Mapping[str, Any]) -> None:
    """The `noop` type: does nothing, so a row exercises the whole pipeline (smoke tests, `offload demo`)."""
