"""`@falcon.before` hooks: caller authentication and the capped body read, ahead of the responders."""

from __future__ import annotations

from typing import Any

import falcon

from ingress.errors import PayloadTooLarge


def require_cron_secret(
    req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
) -> None:
    """The resource's `auth` (a CronAuth) checks the Authorization header."""
    resource.auth.check(req.get_header("Authorization"))


def read_capped_body(
    req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
) -> None:
    """Read the raw body into `req.context.body`, never more than `resource.body_cap_bytes` + 1 bytes."""
    cap: int = resource.body_cap_bytes
    too_large = PayloadTooLarge(f"the body is larger than {cap} bytes", details={"limit_bytes": cap})
    if req.content_length is not None and req.content_length > cap:
        raise too_large
    # Without a length (a chunked body the server de-chunks and terminates) read the raw stream.
    chunked = req.content_length is None and bool(req.env.get("wsgi.input_terminated"))
    body = (req.stream if chunked else req.bounded_stream).read(cap + 1)
    if len(body) > cap:
        raise too_large
    req.context.body = body


def verify_sender(req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]) -> None:
    """The resource's `auth` (a WebhookAuth) verifies the body read by `read_capped_body`."""
    resource.auth.verify(req.get_header, req.context.body)
