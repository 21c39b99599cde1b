"""The `availability` job: each client's free meeting slots for the next days, replaced atomically."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.model import free_slots
from domain.params import configured, int_param
from domain.ports import CalendarProvider, UnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
DEFAULT_DAYS = 14
#: A client refreshed less than this long ago waits for a later run.
DEFAULT_MIN_AGE_S = 300


@dataclass(frozen=True)
class AvailabilityResult:
    clients: int
    changed: int
    slots: int
    failed: int
    has_more: bool


def refresh_availability(
    uow: UnitOfWork,
    *,
    calendar: CalendarProvider,
    now: datetime,
    batch_size: int,
    days: int = DEFAULT_DAYS,
    min_age_s: int = DEFAULT_MIN_AGE_S,
) -> AvailabilityResult:
    """Recompute the free slots of the clients refreshed longest ago, up to `batch_size` of them.

    A slot is `meeting_minutes` long, lies inside business hours in the client's zone, starts at or
    after `now`, ends within `days` days and overlaps no busy interval. Each client's set is replaced
    in one transaction, and not written at all when it did not change. A transient calendar fault ends
    the run (the next one continues); either fault sends the client to the back of the line, so one
    calendar that keeps failing cannot starve the others.
    """
    clients = uow.clients.stalest(
        "availability", done_before=now - timedelta(seconds=min_age_s), limit=batch_size
    )
    uow.commit()
    end_at = now + timedelta(days=days)
    changed = total = failed = done = 0
    stopped = False
    for client in clients:
        try:
            busy = calendar.busy(calendar_id=client.calendar_id, start_at=now, end_at=end_at)
        except TransientError as e:
            logger.warning("Calendar of client %r unavailable (%s); stopping this run", client.id, e)
            uow.clients.touch("availability", client.id, at=now)
            uow.commit()
            stopped = True
            break
        except PermanentError as e:
            logger.error("Calendar of client %r refused: %s", client.id, e)
            uow.clients.touch("availability", client.id, at=now)
            uow.commit()
            failed += 1
            continue
        slots = free_slots(
            client.hours,
            start_at=now,
            end_at=end_at,
            length=timedelta(minutes=client.meeting_minutes),
            busy=busy,
        )
        changed += int(uow.availability.replace(client.id, slots, at=now))
        uow.clients.touch("availability", client.id, at=now)
        uow.commit()
        total += len(slots)
        done += 1
    return AvailabilityResult(
        clients=done,
        changed=changed,
        slots=total,
        failed=failed,
        has_more=stopped or len(clients) == batch_size,
    )


def run(ctx: JobContext) -> Mapping[str, Any]:
    result = refresh_availability(
        ctx.uow,
        calendar=configured(ctx.ports.calendar, "calendar provider"),
        now=ctx.now,
        batch_size=int_param(ctx.params, "batch_size", DEFAULT_BATCH_SIZE),
        days=int_param(ctx.params, "days", DEFAULT_DAYS),
        min_age_s=int_param(ctx.params, "min_age_s", DEFAULT_MIN_AGE_S, minimum=0),
    )
    return asdict(result)
