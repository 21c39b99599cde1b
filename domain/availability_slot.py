"""The `emailbison-availability-slot` job: push active-campaign leads' next free slots to the platform."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.model import Client, Interval, format_slot, lead_zone
from domain.params import configured, int_param
from domain.ports import LeadVariables, UnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 200
#: A lead checked less than this long ago waits for a later run.
DEFAULT_MIN_AGE_S = 600
#: Offer no slot that starts sooner than this: the lead needs time to read the email and book.
DEFAULT_LEAD_TIME_S = 3600
#: The lead variables the platform's templates use.
VARIABLES = ("availability_slot_1", "availability_slot_2")


@dataclass(frozen=True)
class SlotPushResult:
    leads: int
    pushed: int
    unchanged: int
    failed: int
    has_more: bool


def slot_variables(slots: list[Interval], tz: ZoneInfo) -> dict[str, str]:
    """The variables for the next slots, formatted in the lead's zone; a missing slot is an empty string."""
    texts = [format_slot(s.start_at, tz) for s in slots[: len(VARIABLES)]]
    return {name: texts[i] if i < len(texts) else "" for i, name in enumerate(VARIABLES)}


def push_availability_slots(
    uow: UnitOfWork,
    *,
    lead_variables: LeadVariables,
    now: datetime,
    batch_size: int,
    min_age_s: int = DEFAULT_MIN_AGE_S,
    lead_time_s: int = DEFAULT_LEAD_TIME_S,
) -> SlotPushResult:
    """For up to `batch_size` leads checked longest ago, push their next two slots if the text changed.

    The slots come from the availability cache the `availability` job keeps. A value equal to the one
    last pushed is not sent again. A transient platform fault ends the run; either fault marks the
    lead checked (nothing pushed), so one lead that keeps failing cannot starve the others.
    """
    leads = uow.leads.for_slot_push(checked_before=now - timedelta(seconds=min_age_s), limit=batch_size)
    clients: dict[int, Client] = {}
    pushed = unchanged = failed = 0
    stopped = False
    for lead in leads:
        client = clients.get(lead.client_id) or clients.setdefault(
            lead.client_id, uow.clients.get(lead.client_id)
        )
        slots = uow.availability.upcoming(
            client.id, after=now + timedelta(seconds=lead_time_s), limit=len(VARIABLES)
        )
        variables = slot_variables(slots, lead_zone(lead, client))
        if uow.slot_pushes.last(lead.id) == variables:
            uow.slot_pushes.record(lead.id, variables=None, at=now)
            unchanged += 1
            continue
        uow.commit()  # no transaction stays open across the provider call
        try:
            lead_variables.set(workspace_id=client.workspace_id, lead_ref=lead.ref, variables=variables)
        except TransientError as e:
            logger.warning("Lead variables of %r not set (%s); stopping this run", lead.id, e)
            uow.slot_pushes.record(lead.id, variables=None, at=now)
            uow.commit()
            stopped = True
            break
        except PermanentError as e:
            logger.error("Lead variables of %r refused: %s", lead.id, e)
            uow.slot_pushes.record(lead.id, variables=None, at=now)
            uow.commit()
            failed += 1
            continue
        uow.slot_pushes.record(lead.id, variables=variables, at=now)
        uow.commit()
        pushed += 1
    return SlotPushResult(
        leads=len(leads),
        pushed=pushed,
        unchanged=unchanged,
        failed=failed,
        has_more=stopped or len(leads) == batch_size,
    )


def run(ctx: JobContext) -> Mapping[str, Any]:
    result = push_availability_slots(
        ctx.uow,
        lead_variables=configured(ctx.ports.lead_variables, "lead variables port"),
        now=ctx.now,
        batch_size=int_param(ctx.params, "batch_size", DEFAULT_BATCH_SIZE),
        min_age_s=int_param(ctx.params, "min_age_s", DEFAULT_MIN_AGE_S, minimum=0),
        lead_time_s=int_param(ctx.params, "lead_time_s", DEFAULT_LEAD_TIME_S, minimum=0),
    )
    return asdict(result)
