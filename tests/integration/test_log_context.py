"""LogContext on a real RabbitMQ: what a job logs carries its message's correlation id and message id."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker, MessageProxy
from dramatiq.middleware import Middleware

from actors import log_ids
from offload.wiring import Runtime
from tests.support.logs import captured_logs
from tests.support.procs import wait_for

JOB = "test-record"


class IdsAfterwards(Middleware):
    """Logs once every other middleware's after-hook has run, and keeps the ids it saw then."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None]] = []

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.seen.append((log_ids.correlation_id.get(), log_ids.message_id.get()))
        logging.getLogger("actors.test_probe").info("after message %r", message.message_id)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_jobs_log_records_carry_its_correlation_and_message_ids_then_none(runtime: Runtime) -> None:
    probe = IdsAfterwards()
    runtime.broker.middleware.insert(0, probe)  # first in the list: its after-hook runs last
    d = runtime.dispatcher.dispatch(JOB, trigger="cli", correlation_id="cid-of-the-caller")
    worker = dramatiq.Worker(runtime.broker, queues={runtime.registry[JOB].queue}, worker_threads=1)
    with captured_logs(logger="actors") as out:
        worker.start()
        try:
            wait_for(lambda: runtime.ledger.get(d.dispatch_key).status == "succeeded", what="the run")  # type: ignore[union-attr]
            wait_for(lambda: probe.seen, what="the message's after-hooks")
        finally:
            worker.stop()
    lines = out.getvalue().splitlines()
    assert any(
        f" actors.runner [cid-of-the-caller {d.message_id}]: " in line and d.dispatch_key in line
        for line in lines
    ), lines
    assert probe.seen == [(None, None)]
    assert any(f" actors.test_probe [- -]: after message {d.message_id!r}" in line for line in lines), lines
