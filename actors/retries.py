"""Retries: dramatiq's retries with backoff, except that a retry the broker refuses is dead-lettered."""

from __future__ import annotations

from typing import Any

from dramatiq import middleware


class Retries(middleware.Retries):
    """Retry a failed message with exponential backoff; past its retries, dead-letter it.

    dramatiq's own Retries publishes the retry from its after-hook, where dramatiq logs any
    exception and then acks the message: a retry the broker did not take was lost, and its run
    stayed `retrying` for good. Here the message is failed instead, so RabbitMQ dead-letters it
    to `<queue>.XQ` (the consumer's connection still works when a publish does not) and the ledger
    says `dead`; `offload replay` runs it again.

    Parameters: as dramatiq's `Retries`.
    """

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        try:
            super().after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]
        except Exception as e:
            self.logger.error("Could not retry message %r (%s); dead-lettering it.", message.message_id, e)
            message.fail()
