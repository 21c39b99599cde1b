"""Correlation ids: taken from X-Correlation-Id or generated, echoed back and carried into dispatches."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import Any

import falcon

HEADER = "X-Correlation-Id"
#: What a caller's id may look like; anything else is replaced (it ends up in the ledger and logs).
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")

#: The correlation id of the request this thread serves, for log records.
current: ContextVar[str | None] = ContextVar("offload_correlation_id", default=None)


class CorrelationId:
    """Falcon middleware: `req.context.correlation_id` for the resources, the header on every answer."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(HEADER)
        cid = given if given and _VALID.fullmatch(given) else uuid.uuid4().hex
        req.context.correlation_id = cid
        req.context.correlation_token = current.set(cid)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        cid = getattr(req.context, "correlation_id", None)
        if cid is not None:
            resp.set_header(HEADER, cid)
        token = getattr(req.context, "correlation_token", None)
        if token is not None:
            current.reset(token)
