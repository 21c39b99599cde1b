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
    """Run due rows one at a time, up to `batch_size`: claim, run the handler, retry with backoff, and
    give up after the row's max attempts.

    A row's claim (attempt + 1) commits just before its handler runs, so a run that dies counts an
    attempt against the row it was running only. A handler runs inside the unit of work's
    transaction and commits with the row's new status, fenced by its attempt: if the row's lease ran
    out and another drain took it over, this one's work is rolled back. So handlers do database work
    only; one that calls out should enqueue a job of its own instead.
    """
    limit = int_param(ctx.params, "batch_size", 100)
    uow = ctx.uow
    jobs = uow.background_jobs
    outcomes = {"done": 0, "retried": 0, "failed": 0, "taken_over": 0}
    claimed = 0
    while claimed < limit:
        row = jobs.claim_next(now=ctx.now, lease_s=ROW_LEASE_S)
        uow.commit()
        if row is None:
            break
        claimed += 1
        handler = ctx.ports.background_handlers.get(row.type)
        try:
            if handler is None:
                raise PermanentError(f"no handler for background job type {row.type!r}")
            handler(uow, row.payload)
        except Exception as e:
            uow.rollback()
            error = f"{type(e).__name__}: {e}"[:_ERROR_CHARS]
            if isinstance(e, PermanentError) or row.attempts >= row.max_attempts:
                outcome, marked = (
                    "failed",
                    jobs.mark_failed(row.id, attempt=row.attempts, now=ctx.now, error=error),
                )
            else:
                run_at = ctx.now + timedelta(seconds=backoff_s(row.attempts))
                outcome, marked = (
                    "retried",
                    jobs.mark_retry(row.id, attempt=row.attempts, run_at=run_at, error=error),
                )
        else:
            outcome, marked = "done", jobs.mark_done(row.id, attempt=row.attempts, now=ctx.now)
        if marked:
            uow.commit()
        else:
            uow.rollback()
            outcome = "taken_over"
        outcomes[outcome] += 1
    return {"claimed": claimed, **outcomes, "has_more": claimed == limit}


def noop(uow: Any, payload: Mapping[str, Any]) -> None:
    """The `noop` type: does nothing, so a row exercises the whole pipeline (smoke tests, `offload demo`)."""
