"""The sending platform's webhook payload, as the ingress validates it and the handlers read it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

#: Event types that have a handler; any other type is stored and marked ignored.
KNOWN_TYPES = ("EMAIL_SENT", "LEAD_REPLIED", "EMAIL_BOUNCED", "LEAD_UNSUBSCRIBED")
#: The stored header that names the correlation id of the request that delivered an event.
CORRELATION_HEADER = "x-correlation-id"
_NEEDS_MESSAGE = ("EMAIL_SENT", "LEAD_REPLIED")


#: Ids and types: printable text only (they key rows and show in operators' views).
PrintableText = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]+$")]
#: Any other text the handlers store: PostgreSQL refuses NUL in text.
StorableText = Annotated[str, Field(pattern=r"^[^\x00]*$")]
EMAIL_CHARS = 320


def _fits_lower_cased(email: str) -> str:
    # Events are ordered and matched by the address lower-cased, which can be longer ("İ" is two).
    if len(email.lower()) > EMAIL_CHARS:
        raise ValueError(f"the address lower-cased is longer than {EMAIL_CHARS} characters")
    return email


#: The times an event may carry: the handlers count days from them, and the store keeps them in UTC.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


def _in_range(at: datetime) -> datetime:
    try:
        in_range = EARLIEST <= at < LATEST
    except OverflowError:  # 9999-12-31T23:59-05:00 has no UTC value
        in_range = False
    if not in_range:
        raise ValueError(f"the time is out of range: from {EARLIEST.year} up to {LATEST.year}")
    return at


#: A time with its UTC offset, within range.
UtcTime = Annotated[AwareDatetime, AfterValidator(_in_range)]


class EventMeta(BaseModel):
    id: PrintableText = Field(min_length=1, max_length=200)
    type: PrintableText = Field(min_length=1, max_length=100)
    created_at: UtcTime | None = None


class Lead(BaseModel):
    model_config = ConfigDict(extra="allow")

    email: Annotated[str, AfterValidator(_fits_lower_cased)] = Field(
        min_length=3, max_length=EMAIL_CHARS, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
    )
    id: PrintableText | None = Field(
        default=None, max_length=200, description="the sending platform's lead id"
    )
    first_name: StorableText | None = Field(default=None, max_length=200)
    last_name: StorableText | None = Field(default=None, max_length=200)
    time_zone: StorableText | None = None  # an unknown zone is dropped, not refused
    campaign_id: PrintableText | None = Field(default=None, max_length=200)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: PrintableText = Field(min_length=1, max_length=300, description="provider message id")
    thread_id: PrintableText | None = Field(default=None, max_length=300)
    subject: StorableText | None = None
    at: UtcTime = Field(description="when it was sent or received, with its UTC offset")
    sequence_step: int | None = None


class EmailWebhook(BaseModel):
    """`{"event": {...}, "workspace_id": ..., "lead": {...}, "message": {...}}`."""

    model_config = ConfigDict(extra="allow")

    event: EventMeta
    workspace_id: PrintableText = Field(min_length=1, max_length=200)
    lead: Lead | None = None
    message: Message | None = None

    @model_validator(mode="after")
    def _fields_for_type(self) -> EmailWebhook:
        if self.event.type in KNOWN_TYPES and self.lead is None:
            raise ValueError(f"{self.event.type} needs a lead")
        if self.event.type in _NEEDS_MESSAGE and self.message is None:
            raise ValueError(f"{self.event.type} needs a message")
        return self


#: Applies one stored event to the domain, idempotently (by provider ids): (unit of work, event, now).
WebhookHandler = Callable[[Any, EmailWebhook, datetime], None]
