"""DispatchDrainQueue: the domain's DrainQueue port, publishing webhook drains through the dispatcher."""

from __future__ import annotations

import logging

from actors.dispatch import Dispatcher, DispatchError
from domain.runs import Trigger
from domain.webhook_drain import DRAIN_JOB
from store.errors import StoreError

logger = logging.getLogger(__name__)


class DispatchDrainQueue:
    """Queue a drain of one event under the dispatch key the domain chose (so re-drives dedup too).

    Parameters:
      dispatcher: the dispatch API; the drain always goes to the queue, never inline.
      trigger: how the ledger names who asked.
    """

    def __init__(self, dispatcher: Dispatcher, *, trigger: str = Trigger.SCHEDULE) -> None:
        self.dispatcher = dispatcher
        self.trigger = trigger

    def drain(self, event_id: int, *, key: str, correlation_id: str | None) -> bool:
        try:
            self.dispatcher.dispatch(
                DRAIN_JOB,
                trigger=self.trigger,
                params={"event_id": event_id},
                key=key,
                correlation_id=correlation_id,
                inline=False,
            )
        except (DispatchError, StoreError) as e:
            logger.warning("Could not queue the drain of webhook event %r: %s", event_id, e)
            return False
        return True
