"""`offload bench`: throughput of the guarded pipeline against bare Dramatiq, measured in one run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import click

from offload.settings import Settings


@click.group()
def bench() -> None:
    """Benchmarks; each prints a baseline measured in the same run and the ratio to it."""


def _noop(ctx: Any) -> Mapping[str, Any]:
    return {}


def _drain(broker: Any, done: Callable[[], bool], *, threads: int, timeout_s: float) -> float:
    """Start an embedded worker, return seconds until `done()`."""
    import dramatiq

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    try:
        while not done():
            if time.perf_counter() - started > timeout_s:
                raise click.ClickException(f"drain did not finish within {timeout_s} s")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        worker.stop()


def _bare(url: str, *, messages: int, threads: int, timeout_s: float) -> float:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    count = 0
    lock = threading.Lock()

    def bare_noop(i: int) -> None:
        nonlocal count
        with lock:
            count += 1

    actor = dramatiq.actor(broker=broker, actor_name="bench_bare_noop", queue_name="offload-bench.bare")(
        bare_noop
    )
    broker.flush(actor.queue_name)
    for i in range(messages):
        actor.send(i)
    try:
        return _drain(broker, lambda: count >= messages, threads=threads, timeout_s=timeout_s)
    finally:
        broker.flush(actor.queue_name)
        broker.close()


def _guarded(settings: Settings, *, messages: int, threads: int, cap: int, timeout_s: float) -> float:
    from domain.registry import JOBS, JobSpec
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
            rt.dispatcher.dispatch(spec.name, trigger="cli", params={"i": i}, inline=False)
        counts = rt.ledger.counts
        return _drain(
            rt.broker,
            lambda: counts().get((spec.name, "succeeded"), 0) >= messages,
            threads=threads,
            timeout_s=timeout_s,
        )
    finally:
        rt.broker.flush(spec.queue)
        rt.close()


@bench.command()
@click.option("--messages", default=2000, show_default=True, help="Messages per side.")
@click.option("--threads", default=8, show_default=True, help="Worker threads (one process) per side.")
@click.option("--cap", default=8, show_default=True, help="Concurrency cap of the guarded job.")
@click.option("--timeout-s", default=300.0, show_default=True)
def pipeline(messages: int, threads: int, cap: int, timeout_s: float) -> None:
    """Drain N no-op messages through bare Dramatiq and through a fully guarded offload actor.

    Both run on the configured RabbitMQ; the guarded side uses the configured database
    (OFFLOAD_DATABASE_URL: point it at PostgreSQL for the production figure).
    """
    import logging

    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    settings = Settings.load()
    bare_s = _bare(settings.broker_url, messages=messages, threads=threads, timeout_s=timeout_s)
    guarded_s = _guarded(settings, messages=messages, threads=threads, cap=cap, timeout_s=timeout_s)
    bare_rate, guarded_rate = messages / bare_s, messages / guarded_s
    click.echo(f"store: {settings.database_url.split(':', 1)[0]}  messages: {messages}  threads: {threads}")
    click.echo(f"bare dramatiq no-op:     {bare_rate:8.0f} msg/s  ({bare_s:.2f} s)")
    click.echo(f"guarded offload no-op:   {guarded_rate:8.0f} msg/s  ({guarded_s:.2f} s)")
    click.echo(f"ratio guarded/bare:      {guarded_rate / bare_rate:8.2f}")
