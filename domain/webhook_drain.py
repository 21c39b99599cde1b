"""The webhook drain (process one stored event) and the sweeper that re-drives events left pending."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.params import int_param
from domain.webhooks import KNOWN_TYPES, EmailWebhook

DRAIN_JOB = "webhook-drain"
#: Handler attempts on one event (across redeliveries and re-drives) before it is marked failed.
DRAIN_MAX_ATTEMPTS = 5
#: The sweeper leaves alone events younger than this: their first drain message may still be on its way.
SWEEP_OLDER_THAN_S = 60.0
#: How long after queuing (or finding a drain in play) the sweeper looks at an open event again.
SWEEP_REQUEUE_AFTER_S = 900.0
SWEEP_BATCH_SIZE = 200
_REASON_CHARS = 1000


class EventStatus(StrEnum):
    PENDING = "pending"
    RETRYING = "retrying"
    PROCESSED = "processed"
    FAILED = "failed"
    IGNORED = "ignored"


#: An event in one of these is still to be processed: later events of its lead wait for it.
OPEN = frozenset({EventStatus.PENDING, EventStatus.RETRYING})


def drain_key(event_id: int) -> str:
    """The dispatch key of an event's first drain; its re-drives are replays of it (`<key>~replay<n>`)."""
    return f"{DRAIN_JOB}:{event_id}"


def lead_ref(event: EmailWebhook) -> str | None:
    """What orders events: the lead's email address, case-folded."""
    return event.lead.email.strip().lower() if event.lead is not None else None


def drain_event(ctx: JobContext) -> Mapping[str, Any]:
    """Process the stored event `params.event_id` with the handler registered for its type.

    Events of one lead are processed in the order they were received: while an older event of
    the lead is still open, this raises TransientError so the message is retried with backoff.
    A handler that raises TransientError is retried; after DRAIN_MAX_ATTEMPTS attempts, or on a
    PermanentError, the event is marked failed. A known type without a handler stays pending.
    """
    event_id = _event_id(ctx.params)
    uow = ctx.uow
    events = uow.webhook_events
    event = events.lock(event_id)
    if event is None:
        raise PermanentError(f"webhook event {event_id} does not exist")
    summary: dict[str, Any] = {"event_id": event_id, "event_type": event.event_type}
    if event.status not in OPEN:
        return {**summary, "status": event.status, "already": True}
    if event.event_type not in KNOWN_TYPES:
        reason = f"unknown event type {event.event_type!r}: stored, not processed"
        events.mark(event_id, status=EventStatus.IGNORED, reason=reason, finished=True)
        return {**summary, "status": EventStatus.IGNORED}
    handler = ctx.ports.webhook_handlers.get(event.event_type)
    if handler is None:
        reason = f"no handler for {event.event_type} is registered in this deployment; left pending"
        events.mark(event_id, status=event.status, reason=reason)
        return {**summary, "status": event.status, "reason": reason}
    older = events.older_open(event, statuses=OPEN)
    if older is not None:
        reason = f"waiting for older event {older} of the same lead"
        events.mark(event_id, status=event.status, reason=reason)
        uow.commit()
        raise TransientError(f"event {event_id}: {reason}")
    attempt = event.attempts + 1
    try:
        payload = EmailWebhook.model_validate_json(event.body)
        handler(uow, payload, ctx.now)
    except Exception as e:
        uow.rollback()
        # The rollback let go of the row: another drain of it may have finished it meanwhile.
        event = events.lock(event_id)
        if event is None or event.status not in OPEN:
            return {**summary, "status": event.status if event else None, "already": True}
        attempt = event.attempts + 1
        error = f"{type(e).__name__}: {e}"
        reason = f"attempt {attempt}: {error}"[:_REASON_CHARS]
        final = isinstance(e, PermanentError | ValidationError) or attempt >= DRAIN_MAX_ATTEMPTS
        status = EventStatus.FAILED if final else EventStatus.RETRYING
        events.mark(event_id, status=status, reason=reason, attempts=attempt, finished=final)
        if final:
            return {**summary, "status": status, "attempt": attempt, "error": error[:_REASON_CHARS]}
        uow.commit()
        raise TransientError(f"event {event_id} {reason}") from e
    events.mark(event_id, status=EventStatus.PROCESSED, reason=None, attempts=attempt, finished=True)
    return {**summary, "status": EventStatus.PROCESSED, "attempt": attempt}


def sweep(ctx: JobContext) -> Mapping[str, Any]:
    """Queue again the open events whose drains have all ended, oldest first, bounded per run.

    An event is looked at once it is `older_than_s` old and was last queued (or found carried)
    `requeue_after_s` ago. A drain still in play (queued, deferred, retrying, running, lost) carries
    the event: it is left alone, so a backlog does not multiply its messages (a `queued` drain whose
    message is gone is requeue-stale's). Parameters (all optional): `older_than_s`,
    `requeue_after_s`, `batch_size`. Stops at the first event that cannot be published: the broker
    is down, the next run tries again.
    """
    queue = ctx.ports.drain_queue
    if queue is None:
        raise PermanentError("no drain queue is bound to the ports; the sweeper cannot publish")
    older_than_s = float(ctx.params.get("older_than_s", SWEEP_OLDER_THAN_S))
    requeue_after_s = float(ctx.params.get("requeue_after_s", SWEEP_REQUEUE_AFTER_S))
    limit = int_param(ctx.params, "batch_size", SWEEP_BATCH_SIZE)
    uow = ctx.uow
    due = uow.webhook_events.due_for_redrive(
        statuses=OPEN,
        received_before=ctx.now - timedelta(seconds=older_than_s),
        queued_before=ctx.now - timedelta(seconds=requeue_after_s),
        limit=limit,
    )
    uow.commit()
    outcomes = {"queued": 0, "carried": 0}
    publish_failed = False
    for event in due:
        # Publish first, then record: a crash in between finds the new drain in play next time.
        outcome = queue.redrive(event.id, correlation_id=event.correlation_id)
        if outcome == "failed":
            publish_failed = True
            break
        uow.webhook_events.mark_queued(event.id, at=ctx.now)
        uow.commit()
        outcomes[outcome] += 1
    return {
        "found": len(due),
        "requeued": outcomes["queued"],
        "carried": outcomes["carried"],
        "publish_failed": publish_failed,
        "has_more": len(due) == limit,
    }


def _event_id(params: Mapping[str, Any]) -> int:
    value = params.get("event_id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PermanentError(f"{DRAIN_JOB} needs an integer event_id parameter, got {value!r}")
    return value
