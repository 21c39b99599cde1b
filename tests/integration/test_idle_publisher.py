"""A publishing connection RabbitMQ closed while it sat idle: the next publish reconnects, quietly."""

from __future__ import annotations

import logging
import time

import pytest

from offload.logs import quiet_libraries
from offload.settings import Settings
from offload.wiring import build
from tests.support.jobs import TEST_PORTS, TEST_REGISTRY


def test_a_publish_after_the_broker_dropped_an_idle_connection_succeeds_without_error_logs(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread's connection that misses two heartbeats is closed by RabbitMQ (a blocking
    connection answers heartbeats only while it does I/O). pika logged a traceback at ERROR for
    each such connection found dead, in every web thread and worker thread, after every quiet
    minute; the publish itself reconnects and succeeds."""
    levels = {name: logging.getLogger(name).level for name in ("pika", "alembic.runtime.plugins")}
    quiet_libraries()
    runtime = build(
        settings.model_copy(update={"broker_url": settings.broker_url + "?heartbeat=1"}),
        registry=TEST_REGISTRY,
        ports=TEST_PORTS,
    )
    try:
        first = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"n": 1})
        assert first.status == "queued"
        time.sleep(4)  # two heartbeats and more: RabbitMQ closes the connection
        with caplog.at_level(logging.DEBUG):
            second = runtime.dispatcher.dispatch("test-record", trigger="cli", params={"n": 2})
        assert second.status == "queued"
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        runtime.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
