"""Correlation ids: taken from X-Correlation-Id or generated, echoed back and carried into dispatches."""

from __future__ import annotations

import re
import uuid
from typing import Any

import falcon

from actors import log_ids

HEADER = "X-Correlation-Id"
#: What a caller's id may look like; anything else is replaced (it ends up in the ledger and logs).
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


class CorrelationId:
    """Falcon middleware: `req.context.correlation_id` for the resources, the header on every answer."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(HEADER)
        cid = given if given and _VALID.fullmatch(given) else uuid.uuid4().hex
        req.context.correlation_id = cid
        req.context.correlation_token = log_ids.correlation_id.set(cid)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        cid = getattr(req.context, "correlation_id", None)
        if cid is not None:
            resp.set_header(HEADER, cid)
        token = getattr(req.context, "correlation_token", None)
        if token is not None:
            log_ids.correlation_id.reset(token)
