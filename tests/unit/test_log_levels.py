"""What the log handler of every offload process writes for an actor's exception."""

from __future__ import annotations

import io
import logging

from domain.errors import TransientError
from offload.logs import log_handler


def _logged(exc: BaseException) -> str:
    out = io.StringIO()
    logger = logging.getLogger("dramatiq.worker.WorkerThread")
    handler = log_handler(out)
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except BaseException:
            logger.error(  # noqa: G201 (as dramatiq logs it)
                "Failed to process message %s with unhandled exception.", "drain(7)", exc_info=True
            )
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_transient_error_is_one_warning_line_without_a_traceback() -> None:
    """Waiting for an older event of the same lead is routine, not an error with a traceback."""
    text = _logged(TransientError("event 11: waiting for older event 10 of the same lead"))
    assert " WARNING dramatiq.worker.WorkerThread " in text
    assert text.rstrip().endswith(
        "Failed to process message drain(7) with unhandled exception. "
        "TransientError: event 11: waiting for older event 10 of the same lead"
    )
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_any_other_exception_keeps_its_error_and_traceback() -> None:
    text = _logged(RuntimeError("boom"))
    assert " ERROR dramatiq.worker.WorkerThread " in text and "Traceback" in text
