"""The `offload` command line: run the processes, dispatch jobs, read the ledger."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click

from domain.runs import RunStatus, Trigger
from offload.settings import REFUSED, Settings, SettingsError, redact


def main() -> None:
    from store.errors import StoreError

    try:
        cli(standalone_mode=True)
    except SettingsError as e:
        click.echo(f"offload: {e}", err=True)
        sys.exit(REFUSED)
    except StoreError as e:
        click.echo(f"offload: database {_database_hint()}: {e}", err=True)
        sys.exit(1)


def _database_hint() -> str:
    """After a database error: which database (a SQLite path is relative to where offload runs),
    and whether it lacks migrations (when it can be asked)."""
    from store import db as store_db
    from store.errors import StoreError

    url = Settings.load().database_url
    engine = store_db.make_engine(url)
    try:
        behind = store_db.current_revision(engine) != store_db.head_revision()
    except StoreError:
        behind = False
    finally:
        engine.dispose()
    where = redact(url)
    path = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and path and not os.path.isabs(path):
        where += f" (that is {os.path.abspath(path)})"
    return where + (", not migrated (run `offload db upgrade` against it)" if behind else "")


class Ctx:
    """Lazily built runtime, so `--help` and settings errors need no database or broker."""

    def __init__(self) -> None:
        self._runtime: Any = None
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from domain.registry import JOBS

            self._settings = Settings.load()
            self._settings.check_jobs(JOBS.names)
            self._settings.scheduled(JOBS)
        return self._settings

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            from offload.wiring import build

            self._runtime = build(self.settings)
        return self._runtime


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """offload: scheduled jobs and webhooks, run on RabbitMQ workers."""
    import logging

    from offload.logs import configure_logging

    configure_logging(level=logging.INFO if verbose else logging.WARNING)


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Apply every migration."""
    from store import db as store_db

    store_db.upgrade(ctx.runtime.engine)
    click.echo(f"database at revision {store_db.current_revision(ctx.runtime.engine)}")


@cli.command()
@pass_ctx
def jobs(ctx: Ctx) -> None:
    """List the registered jobs."""
    from domain.registry import JOBS

    for spec in ctx.settings.scheduled(JOBS):
        flag = "inline" if (ctx.settings.inline or spec.name in ctx.settings.inline_jobs) else "queue"
        click.echo(
            f"{spec.name:32} {spec.cron or '-':14} {spec.tz:16} cap={spec.concurrency_cap} "
            f"retries={spec.max_retries} {flag:6} {spec.queue}"
        )


@cli.command()
@click.option("--processes", type=click.IntRange(min=1), help="Worker processes (OFFLOAD_WORKER_PROCESSES).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per process (OFFLOAD_WORKER_THREADS).")
@click.option("--queues", multiple=True, help="Only consume these queues (default: every job's).")
@pass_ctx
def worker(ctx: Ctx, processes: int | None, threads: int | None, queues: tuple[str, ...]) -> None:
    """Run Dramatiq worker processes for every job's queue."""
    settings = ctx.settings
    require_broker(settings)
    from store import db as store_db

    store_db.upgrade(ctx.runtime.engine)
    args = [
        sys.executable,
        "-m",
        "dramatiq",
        "offload.worker_app:broker",
        "--processes",
        str(processes or settings.worker_processes),
        "--threads",
        str(threads or settings.worker_threads),
    ]
    for queue in queues:
        args += ["--queues", queue]
    sys.stdout.flush()
    os.execv(sys.executable, args)


@cli.command()
@click.argument("job")
@click.option("--inline", "inline", flag_value=True, default=None, help="Run in this process.")
@click.option("--queue", "inline", flag_value=False, help="Publish to RabbitMQ even if a flag says inline.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="A job parameter.")
@pass_ctx
def dispatch(ctx: Ctx, job: str, inline: bool | None, params: tuple[str, ...]) -> None:
    """Dispatch JOB for its current schedule slot; prints the dispatch as JSON."""
    from actors.dispatch import PublishFailed
    from domain.errors import UnknownJob

    runtime = ctx.runtime
    try:
        d = runtime.dispatcher.dispatch(job, trigger=Trigger.CLI, params=_params(params), inline=inline)
    except UnknownJob:
        raise click.UsageError(f"unknown job {job!r}; known: {', '.join(runtime.registry.names)}") from None
    except PublishFailed as e:
        click.echo(f"offload: {e}", err=True)
        sys.exit(3)
    out: dict[str, Any] = {"dispatch": d.asjson()}
    if d.result is not None:
        out["result"] = dict(d.result)
    click.echo(json.dumps(out, indent=2))


@cli.command()
@click.option("--job", help="Only this job.")
@click.option(
    "--status", type=click.Choice(sorted(s.value for s in RunStatus)), help="Only runs in this status."
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def runs(ctx: Ctx, job: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """The newest runs on the ledger."""
    check_job(ctx, job)
    found = ctx.runtime.ledger.runs(job=job, status=status, limit=limit)
    if as_json:
        for run in found:
            click.echo(json.dumps(run.asdict()))
        return
    if not found:
        click.echo("no runs")
        return
    click.echo(
        f"{'queued (UTC)':19} {'status':9} {'job':28} attempt, duplicates, duration, trigger, mode, key"
    )
    for run in found:
        took = (
            f"{(run.finished_at - run.started_at).total_seconds():.2f}s"
            if run.finished_at and run.started_at
            else "-"
        )
        click.echo(
            f"{run.queued_at:%Y-%m-%d %H:%M:%S} {run.status:9} {run.job:28} try={run.attempt} "
            f"dup={run.duplicates} took={took:8} {run.trigger:8} {run.mode:6} {run.dispatch_key}"
            + (f"  {run.error_type}: {run.error_message}" if run.error_type else "")
        )


@cli.command()
@click.argument("key")
@pass_ctx
def show(ctx: Ctx, key: str) -> None:
    """One run and its history."""
    run = ctx.runtime.ledger.get(key)
    if run is None:
        raise click.UsageError(f"no run with dispatch key {key!r}")
    click.echo(json.dumps(run.asdict(), indent=2))
    for e in ctx.runtime.ledger.events(key):
        where = f"{e.worker_host}:{e.worker_pid}" if e.worker_host else "-"
        click.echo(f"  {e.at:%H:%M:%S.%f} {e.status:9} try={e.attempt} {where} {e.detail or ''}")


@cli.command()
@click.argument("key")
@pass_ctx
def replay(ctx: Ctx, key: str) -> None:
    """Dispatch a dead, failed or missed run again, with `replay_of` lineage."""
    from actors.dispatch import PublishFailed
    from domain.errors import UnknownJob

    runtime = ctx.runtime
    try:
        d = runtime.dispatcher.replay(key)
    except (LookupError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    except UnknownJob as e:
        raise click.UsageError(
            f"run {key!r} is of job {str(e)!r}, which is no longer registered; "
            f"known: {', '.join(runtime.registry.names)}"
        ) from None
    except PublishFailed as e:
        click.echo(f"offload: {e}", err=True)
        sys.exit(3)
    click.echo(json.dumps({"dispatch": d.asjson()}, indent=2))


@cli.command()
@pass_ctx
def status(ctx: Ctx) -> None:
    """Each job's queues (from the RabbitMQ management API), its slots held of its concurrency cap,
    and its runs on the ledger; then the webhook events by status."""
    from offload.management import queue_depths

    runtime = ctx.runtime
    depths = queue_depths(ctx.settings.management_url, ctx.settings.broker_url)
    counts = runtime.ledger.counts()
    header = (
        f"{'job':30} {'ready':>6} {'unacked':>7} {'delayed':>7} {'dead-q':>6} {'workers':>7} {'slots':>5}"
    )
    click.echo(f"{header}  ledger")
    for spec in runtime.registry:
        q = depths.get(spec.queue, {})
        dq = depths.get(f"{spec.queue}.DQ", {})
        xq = depths.get(f"{spec.queue}.XQ", {})
        ledger = " ".join(f"{st}={n}" for (job, st), n in sorted(counts.items()) if job == spec.name)
        cells = [
            q.get("messages_ready", "-"),
            q.get("messages_unacknowledged", "-"),
            dq.get("messages", "-"),
            xq.get("messages", "-"),
            q.get("consumers", "-"),
            f"{runtime.leases.held(spec.name)}/{spec.concurrency_cap}",
        ]
        row = f"{spec.name:30} {cells[0]:>6} {cells[1]:>7} {cells[2]:>7} {cells[3]:>6} {cells[4]:>7}"
        click.echo(f"{row} {cells[5]:>5}  {ledger}")
    with runtime.uow() as uow:
        events = uow.webhook_events.counts()
    # A drain that ends an event `failed` (its handler refused it) succeeds as a run: say so here.
    click.echo("webhook events: " + (" ".join(f"{st}={n}" for st, n in sorted(events.items())) or "none"))


@cli.command()
@pass_ctx
def reap(ctx: Ctx) -> None:
    """Mark runs whose lease expired (their worker died) lost; inline runs, with no message, failed."""
    click.echo(f"reaped {ctx.runtime.ledger.reap()} run(s)")


def check_job(ctx: Ctx, job: str | None) -> None:
    """A usage error for a `--job` that is neither registered nor on the ledger (a typo, most likely)."""
    runtime = ctx.runtime
    if job is None or job in runtime.registry.names or runtime.ledger.runs(job=job, limit=1):
        return
    raise click.UsageError(f"unknown job {job!r}; known: {', '.join(runtime.registry.names)}")


def _params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            out[name] = json.loads(value, parse_constant=_finite, parse_float=_finite)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _finite(number: str) -> float:
    """A number of a --param. NaN, Infinity and 1e999 are no JSON: PostgreSQL refuses them, `export` would
    print them."""
    value = float(number)
    if not math.isfinite(value):
        raise click.BadParameter(f"{number} is not a finite number", param_hint="--param")
    return value


def require_broker(settings: Settings) -> None:
    """Stop with one line saying how to start RabbitMQ when it cannot be reached."""

    from offload.web import broker_probe

    try:
        broker_probe(settings.broker_url)()  # one connection attempt with a socket timeout
    except Exception as e:
        click.echo(
            f"offload: RabbitMQ is not reachable at {redact(settings.broker_url)} ({type(e).__name__}); "
            "start it with `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`)",
            err=True,
        )
        sys.exit(REFUSED)


def _register() -> None:
    """Commands whose bodies live in their own modules."""
    from offload.audit import export, verify
    from offload.bench import bench
    from offload.bench_ingress import ingress as bench_ingress
    from offload.demo import demo
    from offload.processes import dev, scheduler
    from offload.web import web

    cli.add_command(web)
    cli.add_command(bench)
    bench.add_command(bench_ingress)
    cli.add_command(scheduler)
    cli.add_command(dev)
    cli.add_command(demo)
    cli.add_command(export)
    cli.add_command(verify)


_register()

if __name__ == "__main__":
    main()
