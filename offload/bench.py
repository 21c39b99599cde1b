"""`offload bench`: throughput of the guarded pipeline against bare Dramatiq, measured in one run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import click
from dramatiq.middleware import Middleware

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


def _drain(broker: Any, messages: int, *, threads: int, timeout_s: float) -> float:
    """Start an embedded worker, return seconds until it has processed `messages` messages."""
    import dramatiq

    finished = _Finished(messages)
    broker.add_middleware(finished)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    try:
        if not finished.all_done.wait(timeout_s):
            raise click.ClickException(f"drain did not finish within {timeout_s} s")
        return time.perf_counter() - started
    finally:
        worker.stop()


def _bare(url: str, *, messages: int, threads: int, timeout_s: float) -> float:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)

    def bare_noop(i: int) -> None:
        pass

    actor = dramatiq.actor(broker=broker, actor_name="bench_bare_noop", queue_name="offload-bench.bare")(
        bare_noop
    )
    broker.flush(actor.queue_name)
    for i in range(messages):
        actor.send(i)
    try:
        return _drain(broker, messages, threads=threads, timeout_s=timeout_s)
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
        seconds = _drain(rt.broker, messages, threads=threads, timeout_s=timeout_s)
        succeeded = rt.ledger.counts().get((spec.name, "succeeded"), 0)
        if succeeded != messages:
            raise click.ClickException(f"the ledger shows {succeeded} of {messages} runs succeeded")
        return seconds
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
