"""The background-jobs job over the real store: handlers, retries with backoff, giving up."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import select, text

from domain import background_jobs
from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.ports import Ports
from offload.wiring import Runtime
from store.models import BackgroundJobRow
from tests.support.jobs import EFFECTS_DDL

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def flaky(uow: Any, payload: Mapping[str, Any]) -> None:
    raise TransientError("provider timed out")


def refused(uow: Any, payload: Mapping[str, Any]) -> None:
    raise PermanentError("invalid payload")


HANDLERS = {"noop": background_jobs.noop, "flaky": flaky, "refused": refused}


def drain(runtime: Runtime, now: datetime) -> Mapping[str, Any]:
    return drain_with(runtime, now, HANDLERS)


def drain_with(runtime: Runtime, now: datetime, handlers: Mapping[str, Any]) -> Mapping[str, Any]:
    with runtime.uow() as uow:
        return background_jobs.drain(
            JobContext(key="k", uow=uow, params={}, now=now, ports=Ports(background_handlers=handlers))
        )


def rows(runtime: Runtime) -> dict[str, BackgroundJobRow]:
    with runtime.sessions() as s:
        return {r.type: r for r in s.scalars(select(BackgroundJobRow))}


def add(runtime: Runtime, kind: str, *, max_attempts: int = 3) -> None:
    with runtime.uow() as uow:
        uow.background_jobs.add(type=kind, payload={}, run_at=NOW, max_attempts=max_attempts)
        uow.commit()


def test_rows_are_done_retried_with_backoff_or_failed(runtime: Runtime) -> None:
    for kind in ("noop", "flaky", "refused", "unknown"):
        add(runtime, kind)
    assert drain(runtime, NOW) == {
        "claimed": 4,
        "done": 1,
        "retried": 1,
        "failed": 2,
        "taken_over": 0,
        "has_more": False,
    }
    after = rows(runtime)
    assert after["noop"].status == "done"
    assert (after["flaky"].status, after["flaky"].run_at) == ("pending", NOW + timedelta(seconds=30))
    assert after["refused"].status == "failed" and "invalid payload" in (after["refused"].last_error or "")
    assert "no handler" in (after["unknown"].last_error or "")
    assert drain(runtime, NOW + timedelta(seconds=10))["claimed"] == 0, "not due before its backoff"
    drain(runtime, NOW + timedelta(seconds=31))
    drain(runtime, NOW + timedelta(seconds=200))
    assert rows(runtime)["flaky"].status == "failed" and rows(runtime)["flaky"].attempts == 3


def test_a_row_whose_last_attempt_died_with_its_worker_is_failed_not_rerun(runtime: Runtime) -> None:
    add(runtime, "noop", max_attempts=1)
    with runtime.uow() as uow:  # its only attempt is claimed, and the worker dies before finishing
        uow.background_jobs.claim_next(now=NOW, lease_s=60)
        uow.commit()
    assert drain(runtime, NOW + timedelta(minutes=5))["claimed"] == 0
    row = rows(runtime)["noop"]
    assert row.status == "failed" and "never finished" in (row.last_error or "")


def test_a_run_that_dies_on_one_row_charges_no_attempt_to_the_rows_behind_it(runtime: Runtime) -> None:
    def overruns(uow: Any, payload: Mapping[str, Any]) -> None:
        raise TimeLimitExceeded()  # dramatiq's time limit, raised in the worker thread: the run dies

    handlers = {"overruns": overruns, "noop": background_jobs.noop}
    add(runtime, "overruns", max_attempts=2)
    add(runtime, "noop", max_attempts=2)
    at = NOW
    for _ in range(2):
        with runtime.uow() as uow, pytest.raises(TimeLimitExceeded):
            background_jobs.drain(
                JobContext(key="k", uow=uow, params={}, now=at, ports=Ports(background_handlers=handlers))
            )
        at += timedelta(seconds=background_jobs.ROW_LEASE_S + 1)
    assert drain(runtime, at)["done"] == 1  # the overrunning row is given up on the way
    after = rows(runtime)
    assert (after["noop"].status, after["noop"].attempts) == ("done", 1)
    assert (after["overruns"].status, after["overruns"].attempts) == ("failed", 2)


def test_a_drain_whose_row_was_taken_over_commits_none_of_its_work(runtime: Runtime) -> None:
    """A handler that outlived its row's lease (the time limit cannot stop a thread blocked in C): the
    drain that took the row over runs it, and the late one's work is rolled back."""
    later = NOW + timedelta(seconds=background_jobs.ROW_LEASE_S + 1)
    runs: list[str] = []

    def effect(uow: Any, payload: Mapping[str, Any]) -> None:
        runs.append("run")
        if len(runs) == 1:  # the first drain is still in here when the second takes the row over
            assert drain_with(runtime, later, {"effect": effect})["done"] == 1
        uow.session.execute(text(EFFECTS_DDL))
        uow.session.execute(text("INSERT INTO test_effects (dispatch_key, pid, tag) VALUES ('row', 0, '')"))

    add(runtime, "effect")
    assert drain_with(runtime, NOW, {"effect": effect})["taken_over"] == 1
    assert runs == ["run", "run"]
    with runtime.engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM test_effects WHERE dispatch_key = 'row'")).scalar_one()
            == 1
        )
    assert (rows(runtime)["effect"].status, rows(runtime)["effect"].attempts) == ("done", 2)
