"""Jobs that exist only in tests: they record their effects so tests can count them."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from domain import followups
from domain.context import JobContext, JobFn
from domain.errors import PermanentError
from domain.registry import JOBS, JobSpec, Missed
from offload.wiring import default_ports

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS test_effects (dispatch_key VARCHAR(300), pid INTEGER, tag VARCHAR(100))"
)


def trace(event: str, ctx: JobContext) -> None:
    path = os.environ.get("OFFLOAD_TEST_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {ctx.key} {os.getpid()} {time.time():.6f}\n")


def record(ctx: JobContext) -> Mapping[str, Any]:
    """Sleep `sleep_s` (in short naps, so a time limit lands soon), then insert one effect row in the
    run's own transaction."""
    trace("start", ctx)
    wake = time.monotonic() + float(ctx.params.get("sleep_s", 0))
    while (left := wake - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
    session = ctx.uow.session  # type: ignore[attr-defined]
    session.execute(text(EFFECTS_DDL))
    session.execute(
        text("INSERT INTO test_effects (dispatch_key, pid, tag) VALUES (:k, :p, :t)"),
        {"k": ctx.key, "p": os.getpid(), "t": str(ctx.params.get("tag", ""))},
    )
    trace("end", ctx)
    return {"recorded": 1}


def explode(ctx: JobContext) -> Mapping[str, Any]:
    trace("start", ctx)
    if ctx.params.get("permanent"):
        raise PermanentError(f"refused {ctx.key}")
    raise RuntimeError(ctx.params.get("error") or f"boom in {ctx.key}")


TEST_JOBS = [
    JobSpec(
        name="test-record",
        run=record,
        actor_name="record_effect",
        description="records an effect",
        concurrency_cap=8,
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=20_000,
    ),
    JobSpec(
        name="test-capped",
        run=record,
        actor_name="record_capped_effect",
        description="cap 2",
        concurrency_cap=2,
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=20_000,
    ),
    JobSpec(
        name="test-explode",
        run=explode,
        actor_name="explode",
        description="always raises",
        concurrency_cap=4,
        max_retries=2,
        min_backoff_ms=100,
        max_backoff_ms=200,
        time_limit_ms=5_000,
    ),
    JobSpec(
        name="test-crashable",
        run=record,
        actor_name="record_crashable_effect",
        description="SIGKILL me",
        concurrency_cap=1,
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=4_000,
    ),
]
TEST_JOBS.append(
    JobSpec(
        name="test-cron-record",
        run=record,
        actor_name="record_cron_effect",
        description="records an effect; scheduled every five minutes",
        cron="*/5 * * * *",
        concurrency_cap=2,
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=20_000,
    )
)


def flaky(ctx: JobContext) -> Mapping[str, Any]:
    """Fail the first attempt of each key (a marker file under OFFLOAD_TEST_FLAKY_DIR), then record."""
    marker = os.path.join(os.environ["OFFLOAD_TEST_FLAKY_DIR"], ctx.key.replace(":", "_"))
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"first attempt of {ctx.key} fails")
    return record(ctx)


def _scheduled(name: str, missed: Missed, *, run: JobFn = record, **options: Any) -> JobSpec:
    return JobSpec(
        name=name,
        run=run,
        actor_name=name.replace("-", "_"),
        description=f"every 5 minutes in Berlin, missed slots: {missed}",
        cron="*/5 * * * *",
        tz="Europe/Berlin",
        missed=missed,
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=20_000,
        **options,
    )


#: Scheduled jobs: one per missed-slot policy, and one whose first attempt fails.
SCHEDULED_JOBS = [
    _scheduled("test-every-5-skip", "skip"),
    _scheduled("test-every-5-latest", "catch-up-latest"),
    _scheduled("test-every-5-each", "catch-up-each"),
    _scheduled("test-every-5-flaky", "skip", run=flaky),
]
TEST_JOBS.append(
    JobSpec(
        name="test-followups",
        run=followups.run,
        actor_name="send_due_followups_quickly",
        description="the followups job with a short lease, so a crash test need not wait minutes",
        concurrency_cap=1,
        overlap="skip",
        max_retries=3,
        min_backoff_ms=200,
        max_backoff_ms=1000,
        time_limit_ms=4_000,
    )
)
TEST_REGISTRY = JOBS.extended([*TEST_JOBS, *SCHEDULED_JOBS])
TEST_PORTS = default_ports()
