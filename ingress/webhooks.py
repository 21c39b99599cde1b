"""`POST /api/webhooks/email`: verify, cap, validate, store (committed), then queue the drain."""

from __future__ import annotations

from typing import Any

import falcon
import pydantic_core
from pydantic import ValidationError

from domain.webhooks import CORRELATION_HEADER, EmailWebhook
from ingress.auth import WebhookAuth
from ingress.errors import InvalidPayload, MalformedJson
from ingress.hooks import read_capped_body, verify_sender
from ingress.intake import KEPT_HEADERS, WebhookIntake


class EmailWebhooks:
    """202 `{"id", "queued"}` once the event is stored; 200 `{"id", "duplicate": true}` for a known id.

    Parameters:
      intake: stores the event and queues (or runs) its drain.
      auth: verifies the sender.
      body_cap_bytes: larger bodies get 413 and are not read past the cap.
    """

    def __init__(self, *, intake: WebhookIntake, auth: WebhookAuth, body_cap_bytes: int) -> None:
        self.intake = intake
        self.auth = auth
        self.body_cap_bytes = body_cap_bytes

    @falcon.before(read_capped_body)
    @falcon.before(verify_sender)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw: bytes = req.context.body
        event = parse(raw)
        headers = {name: value for name in KEPT_HEADERS if (value := req.get_header(name)) is not None}
        headers[CORRELATION_HEADER] = req.context.correlation_id
        accepted = self.intake.accept(
            event, body=raw.decode(), headers=headers, correlation_id=req.context.correlation_id
        )
        if accepted.duplicate:
            resp.status, resp.media = falcon.HTTP_200, {"id": accepted.id, "duplicate": True}
        elif accepted.ignored:
            resp.status, resp.media = falcon.HTTP_202, {"id": accepted.id, "queued": False, "ignored": True}
        elif accepted.inline:
            resp.status = falcon.HTTP_200
            resp.media = {"id": accepted.id, "queued": False, "inline": True, "status": accepted.status}
        else:
            resp.status, resp.media = falcon.HTTP_202, {"id": accepted.id, "queued": accepted.queued}


def parse(raw: bytes) -> EmailWebhook:
    """The payload, or MalformedJson (400) / InvalidPayload (422) listing every bad field's path."""
    try:
        # Strict JSON first: the model's own parse takes NaN and Infinity, which JSON has not.
        pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as e:
        raise MalformedJson(f"the body is not valid JSON: {e}") from None
    try:
        return EmailWebhook.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False)
        details: list[dict[str, Any]] = [
            {"path": ".".join(str(part) for part in err["loc"]) or "(body)", "message": err["msg"]}
            for err in errors
        ]
        paths = ", ".join(d["path"] for d in details)
        raise InvalidPayload(f"the payload does not match the schema at {paths}", details=details) from None
