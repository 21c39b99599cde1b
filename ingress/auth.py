"""Who may call: the cron bearer secret and the webhook sender's signature, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

from ingress.errors import BearerUnauthorized, NotConfigured, Unauthorized

#: The header a sender puts the shared secret in when no signing secret is configured.
SHARED_SECRET_HEADER = "X-Webhook-Secret"

HeaderGetter = Callable[[str], str | None]


class CronAuth:
    """`Authorization: Bearer <secret>`; with no secret configured every call is refused (503)."""

    def __init__(self, *, secret: str | None) -> None:
        self._secret = secret.encode() if secret else None

    def check(self, authorization: str | None) -> None:
        if self._secret is None:
            raise NotConfigured(
                "the cron routes are disabled: no cron secret is configured (set CRON_SECRET)"
            )
        scheme, _, token = (authorization or "").strip().partition(" ")
        # Compare even when the scheme is wrong, so timing says nothing about which part failed.
        matches = hmac.compare_digest(token.strip().encode(), self._secret)
        if scheme.lower() != "bearer" or not matches:
            raise BearerUnauthorized("missing or wrong bearer token")


class WebhookAuth:
    """Verify a webhook's sender: Standard Webhooks signatures, else a shared-secret header.

    Parameters:
      signing_secret: `whsec_<base64 key>`; when set, only signed requests pass.
      shared_secret: compared with the X-Webhook-Secret header when no signing secret is set.
      tolerance_s: the largest distance between `webhook-timestamp` and now, either way.
      clock: current unix time in seconds.
    """

    def __init__(
        self,
        *,
        signing_secret: str | None,
        shared_secret: str | None,
        tolerance_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = base64.b64decode(signing_secret.removeprefix("whsec_")) if signing_secret else None
        self._shared = shared_secret.encode() if shared_secret else None
        self.tolerance_s = tolerance_s
        self._clock = clock

    @property
    def scheme(self) -> str:
        return "standard-webhooks" if self._key else "shared-secret" if self._shared else "none"

    def verify(self, header: HeaderGetter, body: bytes) -> None:
        """Raise Unauthorized unless the request comes from the sender; NotConfigured without secrets."""
        if self._key is not None:
            self._verify_signature(header, body, self._key)
        elif self._shared is not None:
            given = (header(SHARED_SECRET_HEADER) or "").encode()
            if not hmac.compare_digest(given, self._shared):
                raise Unauthorized(f"missing or wrong {SHARED_SECRET_HEADER} header")
        else:
            raise NotConfigured(
                "webhooks are disabled: configure OFFLOAD_WEBHOOK_SIGNING_SECRET or "
                "OFFLOAD_WEBHOOK_SHARED_SECRET"
            )

    def _verify_signature(self, header: HeaderGetter, body: bytes, key: bytes) -> None:
        msg_id = header("webhook-id")
        stamp = header("webhook-timestamp")
        signatures = header("webhook-signature")
        if not (msg_id and stamp and signatures):
            raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature header")
        try:
            sent_s = int(stamp)
        except ValueError:
            raise Unauthorized("webhook-timestamp is not a unix time in seconds") from None
        if abs(self._clock() - sent_s) > self.tolerance_s:
            raise Unauthorized(f"webhook-timestamp is more than {self.tolerance_s} s from now")
        expected = sign(key, msg_id, sent_s, body).encode()
        for entry in signatures.split():
            version, _, signature = entry.partition(",")
            if version == "v1" and hmac.compare_digest(signature.encode(), expected):
                return
        raise Unauthorized("no webhook-signature matches the body")


def sign(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` (Standard Webhooks v1, without `v1,`)."""
    content = f"{msg_id}.{timestamp_s}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
