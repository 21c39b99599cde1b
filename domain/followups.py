"""The `followups` job: send the follow-up emails that are due, advance each sequence, stop it when done."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from string import Template
from typing import Any

from domain.context import JobContext
from domain.errors import PermanentError, TransientError
from domain.model import (
    FOLLOWUP_ELIGIBLE,
    SUBJECT_CHARS,
    Client,
    Direction,
    FollowupTask,
    Lead,
    LeadStatus,
    add_local_days,
    lead_zone,
)
from domain.params import configured, int_param
from domain.ports import EmailSender, OutgoingEmail, UnitOfWork

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
#: Failed attempts (transient faults) after which a task is given up and marked failed.
MAX_ATTEMPTS = 5
_ERROR_CHARS = 1000


@dataclass(frozen=True)
class FollowupsResult:
    due: int
    sent: int
    scheduled: int
    cancelled: int
    failed: int
    retry_later: int
    has_more: bool


def render(template: str, lead: Lead) -> str:
    """`$first_name`, `$last_name` and `$email` filled in; anything else is left as written."""
    return Template(template).safe_substitute(
        first_name=lead.first_name or "there", last_name=lead.last_name or "", email=lead.email
    )


def send_due_followups(
    uow: UnitOfWork, *, sender: EmailSender, now: datetime, batch_size: int, max_attempts: int = MAX_ATTEMPTS
) -> FollowupsResult:
    """Send up to `batch_size` due tasks, committing after each one.

    No transaction is open during a send. A send interrupted before its task is marked (a crash, a
    lost answer) is repeated by a later run with the task's idempotency key, which the sender honours,
    so the lead gets the email once. A transient send failure leaves the task pending for the next run
    and ends this one (the provider is unwell); a permanent one marks the task failed.
    """
    tasks = uow.followups.due(now=now, limit=batch_size)
    uow.commit()
    sent = scheduled = cancelled = failed = retry_later = 0
    stopped = False
    for task in tasks:
        lead = uow.leads.get(task.lead_id)
        if lead.status not in FOLLOWUP_ELIGIBLE:
            cancelled += uow.followups.cancel_pending(lead.id, at=now, reason=f"lead is {lead.status}")
            uow.commit()
            continue
        client = uow.clients.get(lead.client_id)
        step = uow.followups.sequence(task.sequence_id).step(task.step)
        if step is None:
            error = f"step {task.step} is no longer in the sequence"
            failed += uow.followups.mark_failed(task.id, error=error, at=now)
            uow.commit()
            continue
        email = OutgoingEmail(
            idempotency_key=task.idempotency_key,
            workspace_id=client.workspace_id,
            to_email=lead.email,
            subject=render(step.subject, lead)[:SUBJECT_CHARS],  # as sent, so as recorded
            body=render(step.body, lead),
            thread_id=task.thread_id,
        )
        uow.commit()  # no transaction stays open across the provider call
        try:
            message_id = sender.send(email)
        except TransientError as e:
            error = f"{type(e).__name__}: {e}"[:_ERROR_CHARS]
            if task.attempts + 1 >= max_attempts:
                failed += uow.followups.mark_failed(task.id, error=error, at=now)
            else:
                uow.followups.record_error(task.id, error=error)
                retry_later += 1
            uow.commit()
            logger.warning("Follow-up task %r not sent (%s); stopping this run", task.id, error)
            stopped = True
            break
        except PermanentError as e:
            error = f"{type(e).__name__}: {e}"[:_ERROR_CHARS]
            failed += uow.followups.mark_failed(task.id, error=error, at=now)
            uow.commit()
            continue
        if not uow.followups.mark_sent(task.id, provider_message_id=message_id, at=now):
            uow.commit()
            continue
        sent += 1
        uow.messages.add(
            client_id=client.id,
            lead_id=lead.id,
            direction=Direction.OUTBOUND,
            provider_message_id=message_id,
            thread_id=task.thread_id,
            subject=email.subject,
            at=now,
        )
        uow.leads.advance(lead.id, LeadStatus.CONTACTED)
        scheduled += _schedule_next(uow, task, lead, client)
        uow.commit()
    return FollowupsResult(
        due=len(tasks),
        sent=sent,
        scheduled=scheduled,
        cancelled=cancelled,
        failed=failed,
        retry_later=retry_later,
        has_more=stopped or len(tasks) == batch_size,
    )


def _schedule_next(uow: UnitOfWork, task: FollowupTask, lead: Lead, client: Client) -> int:
    following = uow.followups.sequence(task.sequence_id).after(task.step)
    if following is None:
        return 0
    due_at = add_local_days(task.anchor_at, following.day_offset, lead_zone(lead, client))
    added = uow.followups.add_task(
        lead_id=lead.id,
        sequence_id=task.sequence_id,
        step=following.step,
        anchor_at=task.anchor_at,
        due_at=due_at,
        thread_id=task.thread_id,
    )
    return int(added)


def run(ctx: JobContext) -> Mapping[str, Any]:
    batch_size = int_param(ctx.params, "batch_size", DEFAULT_BATCH_SIZE)
    sender = configured(ctx.ports.email, "email sender")
    return asdict(send_due_followups(ctx.uow, sender=sender, now=ctx.now, batch_size=batch_size))
