"""The ids filter and the entrypoint format: every record says which request or message it serves."""

from __future__ import annotations

import contextvars
import logging

from actors import log_ids
from actors.log_ids import LogIds
from tests.support.logs import captured_logs


def _record() -> logging.LogRecord:
    return logging.LogRecord("some.library", logging.INFO, __file__, 1, "hello %r", ("x",), None)


def test_the_filter_puts_both_ids_on_a_record() -> None:
    def inside() -> logging.LogRecord:
        log_ids.correlation_id.set("cid-1")
        log_ids.message_id.set("mid-1")
        record = _record()
        assert LogIds().filter(record) is True
        return record

    record = contextvars.copy_context().run(inside)
    assert (record.correlation_id, record.message_id) == ("cid-1", "mid-1")


def test_the_filter_puts_a_dash_for_an_id_that_is_not_set() -> None:
    def inside() -> logging.LogRecord:
        log_ids.correlation_id.set("cid-2")
        record = _record()
        LogIds().filter(record)
        return record

    record = contextvars.copy_context().run(inside)
    assert (record.correlation_id, record.message_id) == ("cid-2", "-")
    unset = _record()
    LogIds().filter(unset)
    assert (unset.correlation_id, unset.message_id) == ("-", "-")


def test_the_entrypoint_handler_on_the_root_writes_the_ids_of_any_library_loggers_record() -> None:
    logger = logging.getLogger("some.library")

    def inside() -> None:
        log_ids.correlation_id.set("cid-3")
        log_ids.message_id.set("mid-3")
        logger.info("inside %r", "job")

    with captured_logs(logger="some.library") as out:
        contextvars.copy_context().run(inside)
        logger.info("outside")
    inside_line, outside_line = out.getvalue().splitlines()
    assert inside_line.endswith(" INFO some.library [cid-3 mid-3]: inside 'job'")
    assert outside_line.endswith(" INFO some.library [- -]: outside")
