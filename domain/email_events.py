"""Handlers of the sending platform's webhook events; each is idempotent by the provider's ids."""

from __future__ import annotations

from datetime import datetime

from domain.errors import PermanentError
from domain.model import (
    FOLLOWUP_ELIGIBLE,
    SUBJECT_CHARS,
    Client,
    Direction,
    Lead,
    LeadStatus,
    add_local_days,
    is_zone,
    lead_zone,
)
from domain.ports import UnitOfWork
from domain.webhooks import EmailWebhook, WebhookHandler


def _client(uow: UnitOfWork, event: EmailWebhook) -> Client:
    client = uow.clients.by_workspace(event.workspace_id)
    if client is None:
        raise PermanentError(f"unknown workspace {event.workspace_id!r}")
    return client


def _lead(uow: UnitOfWork, client: Client, event: EmailWebhook) -> Lead:
    """The event's lead, created or updated from the payload (fields it omits are left alone)."""
    payload = event.lead
    if payload is None:
        raise PermanentError(f"{event.event.type} event {event.event.id!r} has no lead")
    campaign_id = uow.leads.campaign(client.id, payload.campaign_id).id if payload.campaign_id else None
    return uow.leads.upsert(
        client.id,
        payload.email,
        first_name=payload.first_name,
        last_name=payload.last_name,
        time_zone=payload.time_zone if is_zone(payload.time_zone) else None,
        platform_lead_id=payload.id,
        campaign_id=campaign_id,
    )


def _move(uow: UnitOfWork, lead: Lead, target: LeadStatus) -> LeadStatus:
    return uow.leads.advance(lead.id, target)[1]


def email_sent(uow: UnitOfWork, event: EmailWebhook, now: datetime) -> None:
    """Record the outbound message, lead -> contacted, and start the follow-up sequence if it has none."""
    client = _client(uow, event)
    lead = _lead(uow, client, event)
    message = event.message
    assert message is not None  # the schema requires it for EMAIL_SENT
    # Follow-ups go into the thread the first email started.
    thread_id = message.thread_id or message.id
    uow.messages.add(
        client_id=client.id,
        lead_id=lead.id,
        direction=Direction.OUTBOUND,
        provider_message_id=message.id,
        thread_id=message.thread_id,
        subject=message.subject[:SUBJECT_CHARS] if message.subject else message.subject,
        at=message.at,
    )
    status = _move(uow, lead, LeadStatus.CONTACTED)
    if status not in FOLLOWUP_ELIGIBLE or uow.followups.has_tasks(lead.id):
        return
    sequence = uow.followups.sequence_for(lead)
    if sequence is None or not sequence.steps:
        return
    first = sequence.steps[0]
    uow.followups.add_task(
        lead_id=lead.id,
        sequence_id=sequence.id,
        step=first.step,
        anchor_at=message.at,
        due_at=add_local_days(message.at, first.day_offset, lead_zone(lead, client)),
        thread_id=thread_id,
    )


def lead_replied(uow: UnitOfWork, event: EmailWebhook, now: datetime) -> None:
    """Record the inbound message, lead -> replied, cancel pending follow-ups."""
    client = _client(uow, event)
    lead = _lead(uow, client, event)
    message = event.message
    assert message is not None  # the schema requires it for LEAD_REPLIED
    uow.messages.add(
        client_id=client.id,
        lead_id=lead.id,
        direction=Direction.INBOUND,
        provider_message_id=message.id,
        thread_id=message.thread_id,
        subject=message.subject[:SUBJECT_CHARS] if message.subject else message.subject,
        at=message.at,
    )
    _move(uow, lead, LeadStatus.REPLIED)
    uow.followups.cancel_pending(lead.id, at=now, reason="lead replied")


def _stopper(target: LeadStatus) -> WebhookHandler:
    def handle(uow: UnitOfWork, event: EmailWebhook, now: datetime) -> None:
        lead = _lead(uow, _client(uow, event), event)
        _move(uow, lead, target)
        uow.followups.cancel_pending(lead.id, at=now, reason=f"lead {target}")

    handle.__doc__ = f"Lead -> {target}, cancel pending follow-ups."
    return handle


email_bounced = _stopper(LeadStatus.BOUNCED)
lead_unsubscribed = _stopper(LeadStatus.UNSUBSCRIBED)

HANDLERS: dict[str, WebhookHandler] = {
    "EMAIL_SENT": email_sent,
    "LEAD_REPLIED": lead_replied,
    "EMAIL_BOUNCED": email_bounced,
    "LEAD_UNSUBSCRIBED": lead_unsubscribed,
}
