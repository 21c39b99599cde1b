"""The `response-timing` job: how long each inbound lead message waited for our first reply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from domain.context import JobContext
from domain.model import Client
from domain.params import int_param
from domain.ports import UnitOfWork

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class ResponseTimingResult:
    recorded: int
    has_more: bool


def record_response_times(uow: UnitOfWork, *, now: datetime, batch_size: int) -> ResponseTimingResult:
    """For inbound messages whose first later outbound reply in the thread is known, upsert its timing.

    Seconds are real elapsed time; business seconds count only the client's business hours in its
    time zone. A timing is rewritten only when a message that arrived late changes which reply is
    first, so a second run over the same data records nothing.
    """
    pairs = uow.messages.awaiting_timing(limit=batch_size)
    clients: dict[int, Client] = {}
    for inbound, outbound in pairs:
        client = clients.get(inbound.client_id) or clients.setdefault(
            inbound.client_id, uow.clients.get(inbound.client_id)
        )
        uow.response_timings.upsert(
            inbound=inbound,
            outbound=outbound,
            response_s=int((outbound.at - inbound.at).total_seconds()),
            business_s=client.hours.seconds_between(inbound.at, outbound.at),
            at=now,
        )
    return ResponseTimingResult(recorded=len(pairs), has_more=len(pairs) == batch_size)


def run(ctx: JobContext) -> Mapping[str, Any]:
    batch_size = int_param(ctx.params, "batch_size", DEFAULT_BATCH_SIZE)
    return asdict(record_response_times(ctx.uow, now=ctx.now, batch_size=batch_size))
