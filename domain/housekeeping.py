"""Housekeeping jobs: the reaper of expired `running` leases and the ledger's retention."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from domain.context import JobContext
from domain.errors import PermanentError
from domain.params import int_param
from domain.ports import Housekeeping

#: Rows one run touches at most, so a run stays short however large the backlog.
REAP_BATCH = 500
PURGE_BATCH = 5_000
#: A run `queued` this long without a worker touching it has probably lost its message.
STALE_QUEUED_S = 600.0


def _port(ctx: JobContext) -> Housekeeping:
    if ctx.ports.housekeeping is None:
        raise PermanentError("no housekeeping adapter is configured")
    return ctx.ports.housekeeping


def reap_expired_leases(ctx: JobContext) -> Mapping[str, Any]:
    """Turn `running` runs whose holder died (lease expired) into `lost` (RabbitMQ redelivers them), or
    `failed` if inline (no message comes back)."""
    limit = int_param(ctx.params, "batch_size", REAP_BATCH)
    reaped = _port(ctx).reap(limit=limit)
    return {"reaped": reaped, "has_more": reaped == limit}


def requeue_stale_runs(ctx: JobContext) -> Mapping[str, Any]:
    """Publish again runs left `queued` for longer than `older_than_s` (no message carries them)."""
    if ctx.ports.requeue is None:
        raise PermanentError("no requeue adapter is configured")
    limit = int_param(ctx.params, "batch_size", REAP_BATCH)
    before = ctx.now - timedelta(seconds=float(ctx.params.get("older_than_s", STALE_QUEUED_S)))
    requeued = ctx.ports.requeue.requeue_stale(queued_before=before, limit=limit)
    return {"requeued": requeued, "has_more": requeued == limit}


def purge_ledger(ctx: JobContext) -> Mapping[str, Any]:
    """Delete ended runs and run events older than the retention days, at most a batch of each."""
    port = _port(ctx)
    limit = int_param(ctx.params, "batch_size", PURGE_BATCH)
    runs = port.purge_runs(
        finished_before=ctx.now - timedelta(days=ctx.ports.ledger_retention_days), limit=limit
    )
    events = port.purge_run_events(
        before=ctx.now - timedelta(days=ctx.ports.run_event_retention_days), limit=limit
    )
    return {"runs": runs, "events": events, "has_more": runs == limit or events == limit}
