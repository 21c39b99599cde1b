"""LogContext: the message's correlation id and message id on the log records written while it runs."""

from __future__ import annotations

from typing import Any

from dramatiq import Broker, MessageProxy
from dramatiq.middleware import Middleware

from actors import log_ids


class LogContext(Middleware):
    """Sets the message's correlation id (its `correlation_id` option, else its id) and id for logs."""

    # First in the broker's list: the before-hook then runs ahead of any guard that skips the
    # message, and the after-hooks run last, once the others have logged how the message ended.

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        log_ids.correlation_id.set(str(message.options.get("correlation_id") or message.message_id))
        log_ids.message_id.set(message.message_id)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _clear()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        _clear()


def _clear() -> None:
    # Set, not reset by token: a worker thread serves nothing else, so there is no outer value to restore.
    log_ids.correlation_id.set(None)
    log_ids.message_id.set(None)
