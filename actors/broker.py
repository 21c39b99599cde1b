"""The RabbitMQ broker with the guard middleware in front, and one actor per registered job."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware, default_middleware
from pika.exceptions import ChannelClosedByBroker

from actors.amqp_url import BLOCKED_TIMEOUT_S, with_connection_defaults
from actors.concurrency_cap import ConcurrencyCap
from actors.dedup import Dedup
from actors.log_context import LogContext
from actors.retries import Retries
from actors.runner import JobRunner
from actors.status_ledger import StatusLedger
from domain.errors import PermanentError
from domain.registry import JobSpec, Registry
from store.leases import SqlLeases
from store.ledger import SqlLedger


def make_broker(
    *,
    url: str,
    ledger: SqlLedger,
    leases: SqlLeases,
    extra: list[Middleware] | None = None,
    wait_out_alarms: bool = False,
) -> RabbitmqBroker:
    """A confirming RabbitMQ broker: LogContext, Dedup, ConcurrencyCap and StatusLedger run before the rest.

    While a RabbitMQ resource alarm blocks publishers, a publish fails after about 30 s, so a cron
    route answers 503 and a webhook `queued: false` rather than hang; with `wait_out_alarms` (a
    worker, whose retries and deferrals would otherwise be dead-lettered) it waits for the alarm to
    clear, the back-pressure RabbitMQ intends.

    Their before-hooks run first, in that order: put the message's ids on log records, claim the run
    with a slot, decide what a full cap means. Their after-hooks run last, in reverse: record the
    outcome (after Retries has decided between another attempt and the dead letter queue), then free
    the slot.
    """
    front: list[Middleware] = [
        LogContext(),
        Dedup(ledger=ledger),
        ConcurrencyCap(leases=leases),
        StatusLedger(ledger=ledger),
    ]
    # dramatiq's defaults, with a Retries that dead-letters a retry the broker refuses
    rest = [(Retries if m is dramatiq.middleware.Retries else m)() for m in default_middleware]
    return RabbitmqBroker(
        url=with_connection_defaults(url, blocked_timeout_s=None if wait_out_alarms else BLOCKED_TIMEOUT_S),
        confirm_delivery=True,
        middleware=[*front, *rest, *(extra or [])],
    )


def declare_actors(broker: dramatiq.Broker, registry: Registry, runner: JobRunner) -> Mapping[str, Any]:
    """One actor per job, on the job's own queue, named after the job's actor verb phrase."""
    return {spec.name: _declare(broker, spec, runner) for spec in registry}


def _declare(broker: dramatiq.Broker, spec: JobSpec, runner: JobRunner) -> Any:
    def body(dispatch_key: str, params: dict[str, Any]) -> None:
        runner.run_in_worker(spec, dispatch_key, params)

    body.__name__ = body.__qualname__ = spec.actor_name
    return dramatiq.actor(
        broker=broker,
        actor_name=spec.actor_name,
        queue_name=spec.queue,
        max_retries=spec.max_retries,
        throws=(PermanentError,),  # no retry can fix it: straight to the dead letter queue
        min_backoff=spec.min_backoff_ms,
        max_backoff=spec.max_backoff_ms,
        time_limit=spec.time_limit_ms,
        job=spec.name,
        concurrency_cap=spec.concurrency_cap,
        overlap=spec.overlap,
        max_wait_ms=spec.max_wait_ms,
        lease_s=runner.lease_s(spec),
    )(body)


def ready_messages(broker: RabbitmqBroker, queues: Iterable[str]) -> dict[str, int]:
    """Messages ready for delivery in each of `queues` (0 for one that does not exist), by passive
    declares on a connection of their own: a thread's publishing connection may be one RabbitMQ
    closed while it sat idle, which only dramatiq's enqueue knows to replace."""
    connection = pika.BlockingConnection(broker.parameters)
    try:
        channel = connection.channel()
        ready: dict[str, int] = {}
        for queue in queues:
            try:
                ready[queue] = int(channel.queue_declare(queue, passive=True).method.message_count)
            except ChannelClosedByBroker as e:
                if e.reply_code != 404:
                    raise
                ready[queue] = 0
                channel = connection.channel()  # the refusal closed the channel
        return ready
    finally:
        connection.close()
