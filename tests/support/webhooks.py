"""Webhook test helpers: recording handlers (no domain behaviour), signed requests, payloads."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from standardwebhooks import Webhook

from domain.errors import PermanentError, TransientError
from domain.ports import Ports
from domain.webhooks import KNOWN_TYPES, EmailWebhook
from ingress.auth import sign
from tests.support.jobs import EFFECTS_DDL, TEST_PORTS

SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SHARED_SECRET = "shared-secret-0123456789"
CRON_SECRET = "cron-secret-0123456789abcdef"


def record_event(uow: Any, event: EmailWebhook, now: datetime) -> None:
    """Insert one test_effects row per call, in the drain's transaction; fail on request.

    A lead email starting with `permanent` raises PermanentError, `transient` TransientError.
    """
    email = event.lead.email if event.lead else ""
    if email.startswith("permanent"):
        raise PermanentError(f"cannot apply {event.event.id}")
    if email.startswith("transient"):
        raise TransientError(f"provider timeout for {event.event.id}")
    if email.startswith("slow"):
        time.sleep(1.0)
    session = uow.session
    session.execute(text(EFFECTS_DDL))
    session.execute(
        text("INSERT INTO test_effects (dispatch_key, pid, tag) VALUES (:k, :p, :t)"),
        {"k": event.event.id, "p": os.getpid(), "t": event.event.type},
    )


#: TEST_PORTS with recording handlers for every known type (worker processes: see tests/support/app.py).
RECORDING_PORTS: Ports = replace(TEST_PORTS, webhook_handlers=dict.fromkeys(KNOWN_TYPES, record_event))


def payload(event_id: str, *, type: str = "EMAIL_SENT", email: str = "lead@example.com") -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": {"id": event_id, "type": type, "created_at": "2026-01-05T09:00:00Z"},
        "workspace_id": "ws-1",
        "lead": {"email": email, "id": "lead-1", "first_name": "Ada"},
    }
    if type in ("EMAIL_SENT", "LEAD_REPLIED"):
        body["message"] = {"id": f"msg-{event_id}", "at": "2026-01-05T09:00:00Z", "subject": "Hello"}
    return body


def signed(
    body: bytes | str, *, secret: str = SIGNING_SECRET, msg_id: str = "msg_1", at: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library (an independent implementation).

    The library signs text only: a body that is not UTF-8 is signed with ours.
    """
    at = at or datetime.now(UTC)
    try:
        text_body = body.decode() if isinstance(body, bytes) else body
        signature = Webhook(secret).sign(msg_id, at, text_body)
    except UnicodeDecodeError:
        assert isinstance(body, bytes)
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signature = "v1," + sign(key, msg_id, int(at.timestamp()), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
