"""`offload export` and `offload verify`: the ledger as JSON lines, and its consistency with RabbitMQ."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from domain.housekeeping import STALE_QUEUED_S

#: What --since takes: the dates and times click reads by default, and the ISO 8601 times export prints.
SINCE_FORMATS = [
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
]


@click.command()
@click.option("--job", help="Only this job.")
@click.option(
    "--since",
    type=click.DateTime(SINCE_FORMATS),
    help="Only runs queued at or after this time (UTC unless it names its offset).",
)
@click.pass_context
def export(click_ctx: click.Context, job: str | None, since: datetime | None) -> None:
    """Every run on the ledger, newest first, one JSON object per line with its history."""
    from offload.cli import Ctx, check_job

    ctx = click_ctx.ensure_object(Ctx)
    check_job(ctx, job)
    ledger = ctx.runtime.ledger
    if since is not None:
        try:
            since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        except OverflowError:  # 9999-12-31T23:59:59-0500 is in the year 10000 in UTC
            raise click.BadParameter(
                f"{since.isoformat()} has no time in UTC", param_hint="--since"
            ) from None
    for run in ledger.runs(job=job, since=since, limit=None):
        row: dict[str, Any] = run.asdict()
        row["events"] = [
            {
                "at": e.at.isoformat(),
                "status": e.status,
                "attempt": e.attempt,
                "worker_host": e.worker_host,
                "worker_pid": e.worker_pid,
                "detail": e.detail,
            }
            for e in ledger.events(run.dispatch_key)
        ]
        click.echo(json.dumps(row))


@click.command()
@click.pass_context
def verify(click_ctx: click.Context) -> None:
    """Check the ledger against itself and RabbitMQ; exit 1 and say what to do when something is off.

    Exit 3 when RabbitMQ's management API cannot be asked, after the problems the ledger shows by
    itself: nothing was checked against RabbitMQ.
    """
    from offload.cli import Ctx
    from offload.management import ManagementUnavailable, queue_depths

    ctx = click_ctx.ensure_object(Ctx)
    runtime = ctx.runtime
    findings: list[str] = []
    expired = runtime.ledger.expired_leases()
    if expired:
        findings.append(f"{expired} running run(s) hold an expired lease (worker died): `offload reap`")
    waiting = runtime.dispatcher.waiting_too_long(datetime.now(UTC) - timedelta(seconds=STALE_QUEUED_S))
    stale = runtime.ledger.stale(waiting, limit=1000)
    if stale:
        findings.append(
            f"{len(stale)} run(s) waiting for a message for over {STALE_QUEUED_S / 60:.0f} min "
            "(queued or deferred; retrying, past the longest backoff), "
            f"e.g. {stale[0].dispatch_key!r}: are workers consuming? requeue-stale publishes again "
            "those no message carries"
        )
    try:
        depths = queue_depths(ctx.settings.management_url, ctx.settings.broker_url)
    except ManagementUnavailable:
        for line in findings:
            click.echo(f"PROBLEM {line}")
        raise
    counts = runtime.ledger.counts()
    for spec in runtime.registry:
        dead = counts.get((spec.name, "dead"), 0)
        dead_letters = int(depths.get(f"{spec.queue}.XQ", {}).get("messages", 0) or 0)
        if dead_letters > dead:
            findings.append(
                f"{spec.queue}.XQ holds {dead_letters} message(s); the ledger has {dead} dead run(s)"
            )
    for line in findings:
        click.echo(f"PROBLEM {line}")
    total = sum(counts.values())
    click.echo(f"checked {total} run(s) of {len(runtime.registry.names)} job(s): {len(findings)} problem(s)")
    sys.exit(1 if findings else 0)
