"""Log handlers for the entrypoints: one format, with the correlation id and message id on every record."""

from __future__ import annotations

import logging
from typing import IO

from actors.log_ids import LogIds
from domain.errors import TransientError

FORMAT = (
    "%(asctime)s [PID %(process)d %(threadName)s] %(levelname)s %(name)s"
    " [%(correlation_id)s %(message_id)s]: %(message)s"
)


def configure_logging(*, level: int, replace: bool = False) -> None:
    """Log to stderr through `log_handler()`, at `level`.

    Like `logging.basicConfig`, it does nothing when the root logger has handlers already, unless
    `replace`: Dramatiq's worker processes have the CLI's handler by the time they import our broker.

    Parameters:
      level: the root logger's level.
      replace: drop the root logger's handlers first.
    """
    logging.basicConfig(level=level, handlers=[log_handler()], force=replace)
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep library chatter out of the log; what matters, offload and dramatiq say themselves.

    pika logs a traceback at ERROR for every connection it finds lost. A thread's publishing
    connection that sat idle past two heartbeats is one: RabbitMQ closed it, and its next publish
    reconnects (dramatiq retries the enqueue) and succeeds. A publish that does fail is reported by
    offload; a consumer's lost connection, by dramatiq. alembic announces each plugin it sets up.
    """
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def log_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing FORMAT to `stream` (sys.stderr as it is when called), with the ids on every record.

    The filter sits on the handler, not on a logger, so it sees the records of every library logger.
    """
    handler = logging.StreamHandler(stream)
    handler.addFilter(LogIds())
    handler.addFilter(transient_as_warning)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def transient_as_warning(record: logging.LogRecord) -> bool:
    """dramatiq logs every exception an actor raises at ERROR, with its traceback. A TransientError
    is a job saying "not yet" (an older event of the lead still open, a provider's 503), and
    dramatiq retries it: one WARNING line, without the traceback. Past the last retry the run is
    `dead` on the ledger and dramatiq warns that its retries are exceeded."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, TransientError) and record.name.startswith("dramatiq"):
        record.msg, record.args = f"{record.getMessage()} {type(exc).__name__}: {exc}", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
    return True
