"""`GET /openapi.json`: the OpenAPI 3.1 description of every route, its auth and its error shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon

from domain.webhooks import EmailWebhook
from ingress.auth import SHARED_SECRET_HEADER
from ingress.correlation import HEADER as CORRELATION_HEADER

_ERROR_CODES = {
    400: "malformed_json, bad_request",
    401: "unauthorized",
    404: "unknown_job, not_found",
    413: "payload_too_large (details: {limit_bytes})",
    422: "invalid_payload (details: [{path, message}])",
    500: "job_failed (inline run), database_error, internal_error",
    503: "broker_unavailable, database_unavailable, not_configured, not_ready",
}


def _error(status: int, what: str) -> dict[str, Any]:
    return {
        "description": f"{what} (code: {_ERROR_CODES[status]})",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {CORRELATION_HEADER: {"$ref": "#/components/headers/CorrelationId"}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def document(*, jobs: Sequence[str], version: str = "0.1.0") -> dict[str, Any]:
    """The document; `jobs` are the names the cron routes accept."""
    webhook_schema = EmailWebhook.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = webhook_schema.pop("$defs", {})
    correlation = {
        "name": CORRELATION_HEADER,
        "in": "header",
        "required": False,
        "description": "Carried into the dispatched message and the ledger; generated when absent.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"},
    }
    cron_operation = {
        "summary": "Dispatch the job's run for its current schedule slot",
        "description": (
            "Queue mode answers 202 with the dispatch; a second call in the same slot answers 202 "
            "with duplicate: true and publishes nothing. Inline mode answers 200 with the result. "
            "A broker that does not confirm the publish gives 503 and nothing runs."
        ),
        "security": [{"cronBearer": []}],
        "parameters": [
            {"name": "job", "in": "path", "required": True, "schema": {"type": "string", "enum": list(jobs)}},
            correlation,
        ],
        "responses": {
            "200": _json("InlineAnswer", "Ran inline"),
            "202": _json("QueuedAnswer", "Queued (or a duplicate of this slot's run)"),
            "401": _error(401, "Missing or wrong bearer token"),
            "404": _error(404, "Unknown job; details.known_jobs lists them"),
            "500": _error(500, "The inline run failed, or the database refused the dispatch"),
            "503": _error(503, "Broker unreachable, database down, or no cron secret configured"),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "offload ingress",
            "version": version,
            "description": "Cron triggers and queue-first webhooks. Every error is "
            '{"error": {"code", "message", "details"}}.',
        },
        "paths": {
            "/api/cron/{job}": {
                "get": {**cron_operation, "operationId": "triggerCronGet"},
                "post": {**cron_operation, "operationId": "triggerCronPost"},
            },
            "/api/webhooks/email": {
                "post": {
                    "operationId": "receiveEmailWebhook",
                    "summary": "Store an email platform event, then queue its processing",
                    "description": (
                        "The event row is committed before the answer. Unknown event types are "
                        "stored and ignored. If the broker is down the answer is still 202 with "
                        "queued: false and a sweeper queues the event later."
                    ),
                    "security": [{"webhookSignature": []}, {"webhookSharedSecret": []}],
                    "parameters": [
                        correlation,
                        *(
                            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                            for name in ("webhook-id", "webhook-timestamp")
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/EmailWebhook"}}
                        },
                    },
                    "responses": {
                        "200": _json("WebhookDone", "A duplicate event id, or processed inline"),
                        "202": _json(
                            "WebhookAccepted", "Stored; queued tells whether the drain is on its way"
                        ),
                        "400": _error(400, "Malformed JSON or a malformed request; nothing stored"),
                        "401": _error(401, "Bad or missing signature, stale timestamp, wrong shared secret"),
                        "413": _error(413, "Body larger than the cap; not read past it"),
                        "422": _error(422, "Wrong shape; nothing stored"),
                        "500": _error(500, "The database refused the event; nothing stored"),
                        "503": _error(503, "Database down (retry later) or no webhook secret configured"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "The process is alive",
                    "responses": {"200": _json("Status", "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "The database and the broker can be reached",
                    "responses": {
                        "200": _json("Status", "Ready"),
                        "503": _error(503, "details.checks names what failed"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "cronBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <CRON_SECRET>, compared in constant time.",
                },
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "webhook-signature",
                    "description": "Standard Webhooks v1: HMAC-SHA256 of {webhook-id}.{webhook-timestamp}"
                    ".{body}; several space-separated signatures accepted.",
                },
                "webhookSharedSecret": {
                    "type": "apiKey",
                    "in": "header",
                    "name": SHARED_SECRET_HEADER,
                    "description": "Used only when no signing secret is configured.",
                },
            },
            "headers": {
                "CorrelationId": {"description": "The request's correlation id", "schema": {"type": "string"}}
            },
            "schemas": {
                **nested,
                "EmailWebhook": webhook_schema,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {},
                            },
                        }
                    },
                },
                "Dispatch": {
                    "type": "object",
                    "required": [
                        "mode",
                        "job",
                        "dispatchKey",
                        "messageId",
                        "correlationId",
                        "slot",
                        "duplicate",
                        "status",
                    ],
                    "properties": {
                        "mode": {"type": "string", "enum": ["queue", "inline"]},
                        "job": {"type": "string"},
                        "dispatchKey": {"type": "string"},
                        "messageId": {"type": "string"},
                        "correlationId": {"type": "string"},
                        "slot": {"type": ["string", "null"], "format": "date-time"},
                        "duplicate": {"type": "boolean"},
                        "status": {"type": "string"},
                        "runId": {"type": "integer"},
                    },
                },
                "QueuedAnswer": {
                    "type": "object",
                    "required": ["success", "dispatch"],
                    "properties": {
                        "success": {"const": True},
                        "dispatch": {"$ref": "#/components/schemas/Dispatch"},
                    },
                },
                "InlineAnswer": {
                    "type": "object",
                    "required": ["success", "dispatch", "result"],
                    "properties": {
                        "success": {"const": True},
                        "dispatch": {"$ref": "#/components/schemas/Dispatch"},
                        "result": {"type": ["object", "null"]},
                    },
                },
                "WebhookAccepted": {
                    "type": "object",
                    "required": ["id", "queued"],
                    "properties": {
                        "id": {"type": "integer"},
                        "queued": {"type": "boolean"},
                        "ignored": {"type": "boolean"},
                    },
                },
                "WebhookDone": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {
                        "id": {"type": "integer"},
                        "duplicate": {"type": "boolean"},
                        "inline": {"type": "boolean"},
                        "queued": {"type": "boolean"},
                        "status": {"type": ["string", "null"]},
                    },
                },
                "Status": {"type": "object", "required": ["status"]},
            },
        },
    }


class OpenApi:
    def __init__(self, *, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
