"""HTTP errors and the error handlers: the only place where exceptions become HTTP answers.

Every error answer has the shape `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import falcon

from actors.dispatch import DispatchError, PublishFailed
from domain.errors import UnknownJob
from store.errors import StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

ErrorHandler = Callable[[falcon.Request, falcon.Response, Any, dict[str, Any]], None]


class ApiError(Exception):
    """Root of the errors the ingress raises itself; each subclass fixes a status and a code."""

    status = falcon.HTTP_400
    code = "bad_request"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Unauthorized(ApiError):
    status = falcon.HTTP_401
    code = "unauthorized"


class BearerUnauthorized(Unauthorized):
    headers = {"WWW-Authenticate": 'Bearer realm="offload-cron"'}


class NotConfigured(ApiError):
    """A route whose secret is not configured refuses every call rather than running open."""

    status = falcon.HTTP_503
    code = "not_configured"


class PayloadTooLarge(ApiError):
    status = falcon.HTTP_413
    code = "payload_too_large"


class MalformedJson(ApiError):
    status = falcon.HTTP_400
    code = "malformed_json"


class InvalidPayload(ApiError):
    status = falcon.HTTP_422
    code = "invalid_payload"


class NotReady(ApiError):
    status = falcon.HTTP_503
    code = "not_ready"


class JobFailed(ApiError):
    """An inline run ended without success; the ledger row has the error."""

    status = falcon.HTTP_500
    code = "job_failed"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON of every error answer, the server's own refusals included."""
    return {"error": {"code": code, "message": message, "details": details}}


def render(resp: falcon.Response, status: str, code: str, message: str, details: Any = None) -> None:
    resp.status = status
    resp.media = error_body(code, message, details)


def api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError, params: dict[str, Any]) -> None:
    resp.set_headers(ex.headers)
    render(resp, ex.status, ex.code, ex.message, ex.details)


def unknown_job(known: Sequence[str]) -> ErrorHandler:
    def handle(req: falcon.Request, resp: falcon.Response, ex: UnknownJob, params: dict[str, Any]) -> None:
        render(resp, falcon.HTTP_404, "unknown_job", f"no job named {ex}", {"known_jobs": list(known)})

    return handle


def dispatch_error(
    req: falcon.Request, resp: falcon.Response, ex: DispatchError, params: dict[str, Any]
) -> None:
    details = {"broker": ex.broker, "reason": ex.reason} if isinstance(ex, PublishFailed) else None
    render(resp, falcon.HTTP_503, "broker_unavailable", f"{ex}; nothing was run", details)


def store_error(req: falcon.Request, resp: falcon.Response, ex: StoreError, params: dict[str, Any]) -> None:
    logger.error("Database error on %s %s: %s", req.method, req.path, ex)
    if isinstance(ex, StoreUnavailable):  # transient: the sender should retry
        render(resp, falcon.HTTP_503, "database_unavailable", "the database cannot be reached; try again")
    else:
        render(
            resp, falcon.HTTP_500, "database_error", "the database refused the request; nothing was stored"
        )


def http_error(
    req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict[str, Any]
) -> None:
    """Falcon's own errors (no route, wrong method) in our shape."""
    resp.set_headers(ex.headers or {})
    render(
        resp, str(ex.status), status_code(ex.status_code), ex.description or HTTPStatus(ex.status_code).phrase
    )


def status_code(status: int) -> str:
    """The error code of an HTTP status of its own: its phrase in snake case (`bad_request`)."""
    return HTTPStatus(status).phrase.lower().replace(" ", "_")


def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]) -> None:
    logger.exception("Unhandled error on %s %s", req.method, req.path)
    render(resp, falcon.HTTP_500, "internal_error", "an unexpected error occurred; see the server log")
