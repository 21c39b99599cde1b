"""DispatchDrainQueue: the domain's DrainQueue port, re-driving webhook drains through the dispatcher."""

from __future__ import annotations

import logging

from actors.dispatch import Dispatch, Dispatcher, DispatchError
from domain.ports import Redrive
from domain.runs import FINAL, Trigger
from domain.webhook_drain import DRAIN_JOB, drain_key
from store.errors import StoreError

logger = logging.getLogger(__name__)


class DispatchDrainQueue:
    """Re-drives an event as a replay of its first drain, so its drains form one line on the ledger
    (`replay_of`) and only the latest can be in play: a replay waits for the one before to end.

    Parameters:
      dispatcher: the dispatch API.
      trigger: how the ledger names who asked.
    """

    def __init__(self, dispatcher: Dispatcher, *, trigger: str = Trigger.SCHEDULE) -> None:
        self.dispatcher = dispatcher
        self.trigger = trigger

    def redrive(self, event_id: int, *, correlation_id: str | None) -> Redrive:
        key = drain_key(event_id)
        try:
            d = self._redrive(event_id, key, correlation_id)
        except (DispatchError, StoreError) as e:
            logger.warning("Could not queue the drain of webhook event %r: %s", event_id, e)
            return "failed"
        return "carried" if d is None or d.duplicate else "queued"

    def _redrive(self, event_id: int, key: str, correlation_id: str | None) -> Dispatch | None:
        try:
            return self.dispatcher.replay(
                key, correlation_id=correlation_id, trigger=self.trigger, ended=FINAL
            )
        except ValueError:
            return None  # the first drain has not ended: its message carries the event
        except LookupError:  # no first drain on the ledger (retention purged it): this is one
            return self.dispatcher.dispatch(
                DRAIN_JOB,
                trigger=self.trigger,
                params={"event_id": event_id},
                key=key,
                correlation_id=correlation_id,
            )
