"""WebhookIntake: store an incoming event (committed before any answer), then queue or run its drain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.dispatch import Dispatcher, DispatchError
from domain import webhook_drain
from domain.runs import Trigger
from domain.webhook_drain import EventStatus
from domain.webhooks import CORRELATION_HEADER, KNOWN_TYPES, EmailWebhook
from store.db import translate_errors
from store.errors import StoreError
from store.ledger import NewRun, utcnow
from store.uow import SqlUnitOfWork
from store.webhook_events import NewWebhookEvent, SqlWebhookIntake

logger = logging.getLogger(__name__)

#: Request headers kept with the event (never the signature or a secret).
KEPT_HEADERS = ("webhook-id", "webhook-timestamp", "content-type", "user-agent", CORRELATION_HEADER)


@dataclass(frozen=True)
class Accepted:
    """What became of one event: stored (id), and then duplicate, ignored, queued or run inline."""

    id: int
    duplicate: bool = False
    ignored: bool = False
    queued: bool = False
    inline: bool = False
    status: str | None = None


class WebhookIntake:
    """Queue-first intake: the event row is committed before the answer; the drain runs later.

    Parameters:
      store: stores an event with its drain's run.
      uow: makes a unit of work over the store.
      dispatcher: publishes the drain (dispatch key `webhook-drain:<event id>`).
      provider: the `provider` column of the stored events.
      inline_types: event types whose drain runs in the request, after the row is committed.
      publish_pause_s: after a failed publish, how long to answer `queued: false` without trying
        the broker again (each try against a dead broker takes seconds); the sweeper re-drives.
      clock: the current UTC time.
    """

    def __init__(
        self,
        *,
        store: SqlWebhookIntake,
        uow: Callable[[], SqlUnitOfWork],
        dispatcher: Dispatcher,
        provider: str = "email",
        inline_types: frozenset[str] = frozenset(),
        publish_pause_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.uow = uow
        self.dispatcher = dispatcher
        self.provider = provider
        self.inline_types = inline_types
        self.publish_pause_s = publish_pause_s
        self.clock = clock
        # Shared by all request threads: a float store is atomic, and a stale read only costs a try.
        self._paused_until = 0.0

    def accept(
        self, event: EmailWebhook, *, body: str, headers: Mapping[str, str], correlation_id: str
    ) -> Accepted:
        """Store `event`; raises StoreError when it could not be stored (the sender must retry).

        A queued event's row and its drain's ledger row commit together (`SqlWebhookIntake`); the
        drain's message is published after that commit.
        """
        known = event.event.type in KNOWN_TYPES
        inline = event.event.type in self.inline_types or self.dispatcher.is_inline(webhook_drain.DRAIN_JOB)
        # After a failed publish the broker is left alone for a while: the sweeper re-drives the event.
        queue = known and not inline and time.monotonic() >= self._paused_until
        now = self.clock()
        new = NewWebhookEvent(
            provider=self.provider,
            provider_event_id=event.event.id,
            event_type=event.event.type,
            lead_ref=webhook_drain.lead_ref(event),
            headers=headers,
            body=body,
            status=EventStatus.PENDING if known else EventStatus.IGNORED,
            status_reason=None
            if known
            else f"unknown event type {event.event.type!r}: stored, not processed",
            received_at=now,
            queued_at=now if queue or (known and inline) else None,
        )

        def drain_of(event_id: int) -> NewRun:
            return self.dispatcher.prepare(webhook_drain.DRAIN_JOB, **_drain_args(event_id, correlation_id))

        stored = self.store.store(new, drain=drain_of if queue else None)
        event_id, duplicate, drain = stored.id, stored.duplicate, stored.drain
        if duplicate:
            logger.info("Duplicate webhook event %r (stored as %r)", event.event.id, event_id)
            return Accepted(event_id, duplicate=True)
        if not known:
            return Accepted(event_id, ignored=True)
        try:
            if inline:
                args = _drain_args(event_id, correlation_id)
                self.dispatcher.dispatch(webhook_drain.DRAIN_JOB, **args, inline=True)
                return Accepted(event_id, inline=True, status=self._status(event_id))
            if drain is None:
                return Accepted(event_id, queued=False)
            self.dispatcher.publish(drain)
        except (DispatchError, StoreError) as e:
            logger.warning("Webhook event %r stored but not queued: %s", event_id, e)
            self._paused_until = time.monotonic() + self.publish_pause_s
            self._unqueue(event_id)
            return Accepted(event_id, queued=False)
        return Accepted(event_id, queued=True)

    def _unqueue(self, event_id: int) -> None:
        """No message carries the event: clear queued_at so the sweeper's next run picks it up."""
        try:
            with translate_errors(), self.uow() as uow:
                uow.webhook_events.mark_queued(event_id, at=None)
                uow.commit()
        except StoreError as e:
            logger.warning("Could not clear queued_at of webhook event %r: %s", event_id, e)

    def _status(self, event_id: int) -> str | None:
        with translate_errors(), self.uow() as uow:
            stored = uow.webhook_events.get(event_id)
            return stored.status if stored else None


def _drain_args(event_id: int, correlation_id: str) -> dict[str, Any]:
    """The dispatch arguments of an event's drain (dispatch key `webhook-drain:<event id>`)."""
    return {
        "trigger": Trigger.HTTP,
        "params": {"event_id": event_id},
        "key": webhook_drain.drain_key(event_id),
        "correlation_id": correlation_id,
    }
