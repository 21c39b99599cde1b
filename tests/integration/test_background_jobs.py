"""The background-jobs job over the real store: handlers, retries with backoff, giving up."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from domain import background_jobs
from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.ports import Ports
from offload.wiring import Runtime
from store.models import BackgroundJobRow

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def flaky(uow: Any, payload: Mapping[str, Any]) -> None:
    raise TransientError("provider timed out")


def refused(uow: Any, payload: Mapping[str, Any]) -> None:
    raise PermanentError("invalid payload")


HANDLERS = {"noop": background_jobs.noop, "flaky": flaky, "refused": refused}


def drain(runtime: Runtime, now: datetime) -> Mapping[str, Any]:
    with runtime.uow() as uow:
        return background_jobs.drain(
            JobContext(key="k", uow=uow, params={}, now=now, ports=Ports(background_handlers=HANDLERS))
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
    assert drain(runtime, NOW) == {"claimed": 4, "done": 1, "retried": 1, "failed": 2, "has_more": False}
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
        uow.background_jobs.claim_due(now=NOW, limit=10, lease_s=60)
        uow.commit()
    assert drain(runtime, NOW + timedelta(minutes=5))["claimed"] == 0
    row = rows(runtime)["noop"]
    assert row.status == "failed" and "never finished" in (row.last_error or "")
