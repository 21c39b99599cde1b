"""The ids every log record carries: set by the web and worker middleware, put on records by `LogIds`."""

from __future__ import annotations

import logging
from contextvars import ContextVar

#: The correlation id of the web request or the message this thread serves.
correlation_id: ContextVar[str | None] = ContextVar("offload_correlation_id", default=None)
#: The id of the message this thread processes.
message_id: ContextVar[str | None] = ContextVar("offload_message_id", default=None)

#: What a record carries for an id that is not set.
UNSET = "-"


class LogIds(logging.Filter):
    """Copies the correlation id and the message id onto every record (UNSET when unset); drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get() or UNSET
        record.message_id = message_id.get() or UNSET
        return True
