"""`offload bench`: throughput of the guarded pipeline against bare Dramatiq, measured in one run."""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
from dramatiq.middleware import Middleware

from offload.proc_cpu import server_cpu_s, server_ticks
from offload.settings import Settings


@click.group()
def bench() -> None:
    """Benchmarks; each prints a baseline measured in the same run and the ratio to it."""


def _noop(ctx: Any) -> Mapping[str, Any]:
    return {}


class _Finished(Middleware):
    """Counts messages whose processing ended without an exception; both sides count the same way."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.lock = threading.Lock()
        self.all_done = threading.Event()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            with self.lock:
                self.count += 1
                if self.count >= self.target:
                    self.all_done.set()


@dataclass(frozen=True)
class Drained:
    seconds: float
    cpu_s: float  # user + system CPU of this process while draining
    switches: int  # context switches of this process while draining
    servers_cpu_s: Mapping[str, float]  # CPU of the local PostgreSQL and RabbitMQ processes meanwhile

    def cpu_bound_rate(self, messages: int, cores: int) -> float:
        """The rate if every core did nothing but this drain's work (this process and the servers)."""
        return cores * messages / (self.cpu_s + sum(self.servers_cpu_s.values()))

    def per_message(self, messages: int) -> str:
        cpu_us, switches = self.cpu_s / messages * 1e6, self.switches / messages
        servers = "".join(
            f", {name} {s / messages * 1e6:4.0f}" for name, s in sorted(self.servers_cpu_s.items())
        )
        return f"cpu {cpu_us:5.0f} us/msg{servers}; {switches:4.0f} ctx switches/msg"


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw + r.ru_nivcsw


def _drain(broker: Any, queue: str, messages: int, *, threads: int, timeout_s: float) -> Drained:
    """Start an embedded worker on `queue` and measure it until it has processed `messages` messages."""
    import dramatiq

    finished = _Finished(messages)
    broker.add_middleware(finished)
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=threads, worker_timeout=100)
    cpu, switches, servers = *_usage(), server_ticks()
    started = time.perf_counter()
    worker.start()
    try:
        if not finished.all_done.wait(timeout_s):
            raise click.ClickException(f"drain did not finish within {timeout_s} s")
        seconds = time.perf_counter() - started
        cpu_after, switches_after = _usage()
        return Drained(
            seconds, cpu_after - cpu, switches_after - switches, server_cpu_s(servers, server_ticks())
        )
    finally:
        worker.stop()


def _bare(url: str, name: str, body: Any, args: list[Any], *, threads: int, timeout_s: float) -> Drained:
    """Drain one message per item of `args` through a plain Dramatiq actor running `body`."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    actor = dramatiq.actor(broker=broker, actor_name=f"bench_{name}", queue_name=f"offload-bench.{name}")(
        body
    )
    broker.flush(actor.queue_name)
    for arg in args:
        actor.send(arg)
    try:
        return _drain(broker, actor.queue_name, len(args), threads=threads, timeout_s=timeout_s)
    finally:
        broker.flush(actor.queue_name)
        broker.close()


def _bare_noop(i: int) -> None:
    pass


def _guarded(
    settings: Settings, *, messages: int, threads: int, cap: int, timeout_s: float
) -> tuple[Drained, Drained]:
    """The guarded drain, then the floor measured on the runs it left."""
    from domain.registry import JOBS, JobSpec
    from domain.runs import Trigger
    from offload.wiring import build
    from store import db

    spec = JobSpec(
        name=f"bench-{uuid.uuid4().hex[:6]}",
        run=_noop,
        actor_name="bench_guarded_noop",
        description="benchmark no-op",
        concurrency_cap=cap,
        max_retries=0,
        time_limit_ms=60_000,
    )
    rt = build(settings, registry=JOBS.extended([spec]))
    db.upgrade(rt.engine)
    try:
        for i in range(messages):
            rt.dispatcher.dispatch(spec.name, trigger=Trigger.CLI, params={"i": i}, inline=False)
        drained = _drain(rt.broker, spec.queue, messages, threads=threads, timeout_s=timeout_s)
        succeeded = rt.ledger.counts().get((spec.name, "succeeded"), 0)
        if succeeded != messages:
            raise click.ClickException(f"the ledger shows {succeeded} of {messages} runs succeeded")
        return drained, _floor(settings, rt.engine, spec.name, threads=threads, timeout_s=timeout_s)
    finally:
        rt.broker.flush(spec.queue)
        rt.close()


def _floor(settings: Settings, engine: Any, job: str, *, threads: int, timeout_s: float) -> Drained:
    """Bare Dramatiq plus the least store work the guards need: two single-row commits per message.

    A run must be claimed durably before its job starts (an uncommitted claim holds nothing
    against another host) and marked `succeeded` in the job's own transaction, so a guarded
    message costs at least two commits. Here a plain actor runs one single-row update of a run's
    row twice per message, each a statement in autocommit (one round trip, no BEGIN or COMMIT of
    its own), on the same engine and, on PostgreSQL, through the same executor as the guards'
    hot statements: a ceiling for any such design.
    """
    from sqlalchemy import bindparam, func, select, update

    from store.db import Direct, PgStatement
    from store.models import Run

    with engine.connect() as conn:
        keys = list(conn.scalars(select(Run.dispatch_key).where(Run.job == job)))
    touch = update(Run).where(Run.dispatch_key == bindparam("k")).values(updated_at=func.now())
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    direct = Direct(engine)
    pg_touch = PgStatement(
        "UPDATE background_function_runs SET updated_at = now() WHERE dispatch_key = %(k)s RETURNING 1"
    )

    def commit_twice(key: str) -> None:
        for _ in range(2):
            if engine.dialect.name == "postgresql":  # as the guards' own hot statements run
                direct.run(pg_touch, {"k": key})
            else:
                with autocommit.connect() as conn:
                    conn.execute(touch, {"k": key})

    return _bare(settings.broker_url, "floor", commit_twice, keys, threads=threads, timeout_s=timeout_s)


@bench.command()
@click.option("--messages", default=2000, show_default=True, help="Messages per side.")
@click.option("--threads", default=8, show_default=True, help="Worker threads (one process) per side.")
@click.option("--cap", default=8, show_default=True, help="Concurrency cap of the guarded job.")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Rounds of the three drains, one after the other.",
)
@click.option("--timeout-s", default=300.0, show_default=True)
def pipeline(messages: int, threads: int, cap: int, rounds: int, timeout_s: float) -> None:
    """Drain N no-op messages through bare Dramatiq and through a fully guarded offload actor.

    A third drain, the floor, is bare Dramatiq committing two single-row updates per message, one
    statement each: the least store work the guards' promises allow. All run on the configured
    RabbitMQ; the guarded side and the floor use the configured database (OFFLOAD_DATABASE_URL:
    point it at PostgreSQL for the production figure). Each side's CPU per message is given for
    this process and for the local PostgreSQL and RabbitMQ, and from their sum the rate at which
    the machine's cores would be saturated.

    The three drains run one after the other, `--rounds` times, so that a busy spell of the
    machine falls on every side alike; each figure is the median over the rounds, with the range
    in brackets, and a ratio is taken within each round.
    """
    import logging

    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    settings = Settings.load()
    runs: dict[str, list[Drained]] = {"bare": [], "guarded": [], "floor": []}
    for _ in range(rounds):
        runs["bare"].append(
            _bare(
                settings.broker_url,
                "bare",
                _bare_noop,
                list(range(messages)),
                threads=threads,
                timeout_s=timeout_s,
            )
        )
        guarded, floor = _guarded(settings, messages=messages, threads=threads, cap=cap, timeout_s=timeout_s)
        runs["guarded"].append(guarded)
        runs["floor"].append(floor)
    rates = {side: [messages / run.seconds for run in drained] for side, drained in runs.items()}
    click.echo(
        f"store: {settings.database_url.split(':', 1)[0]}  messages: {messages}  threads: {threads}  "
        f"rounds: {rounds} (medians, [ranges])"
    )
    for side, label in (
        ("bare", "bare dramatiq no-op:"),
        ("guarded", "guarded offload no-op:"),
        ("floor", "floor, bare + 2 commits:"),
    ):
        click.echo(
            f"{label:24} {_spread(rates[side], '.0f')} msg/s  ({_median(runs[side]).per_message(messages)})"
        )
    ratios = {
        side: [r / b for r, b in zip(rates[side], rates["bare"], strict=True)]
        for side in ("guarded", "floor")
    }
    click.echo(f"ratio guarded/bare:      {_spread(ratios['guarded'], '.2f')}  (target >= 0.5)")
    ceiling = "a ceiling for any design that commits per message"
    click.echo(f"ratio floor/bare:        {_spread(ratios['floor'], '.2f')}  ({ceiling})")
    cores = len(os.sched_getaffinity(0))
    bare_rate = statistics.median(rates["bare"])
    bound = {side: _median(runs[side]).cpu_bound_rate(messages, cores) for side in ("guarded", "floor")}
    click.echo(
        f"CPU-bound rate on {cores} cores (this process and the local servers' median CPU per message): "
        + ", ".join(
            f"{side} {rate:.0f} msg/s = {rate / bare_rate:.2f} x bare" for side, rate in bound.items()
        )
    )


def _spread(values: list[float], spec: str) -> str:
    """The median of `values`, then their range in brackets when there are several."""
    median = format(statistics.median(values), spec)
    if len(values) == 1:
        return median
    return f"{median} [{format(min(values), spec)}-{format(max(values), spec)}]"


def _median(drained: list[Drained]) -> Drained:
    """Each figure's median over several drains of the same side."""
    servers = {name for run in drained for name in run.servers_cpu_s}
    return Drained(
        seconds=statistics.median(run.seconds for run in drained),
        cpu_s=statistics.median(run.cpu_s for run in drained),
        switches=int(statistics.median(run.switches for run in drained)),
        servers_cpu_s={
            name: statistics.median(run.servers_cpu_s.get(name, 0.0) for run in drained) for name in servers
        },
    )
