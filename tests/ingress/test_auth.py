"""Caller authentication without IO: the cron bearer, Standard Webhooks signatures, the shared secret."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from ingress.auth import CronAuth, WebhookAuth
from ingress.errors import NotConfigured, Unauthorized
from tests.support.webhooks import SHARED_SECRET, SIGNING_SECRET, payload, signed

BODY = json.dumps(payload("evt-1")).encode()


def getter(headers: Mapping[str, str]):  # type: ignore[no-untyped-def]
    lower = {k.lower(): v for k, v in headers.items()}
    return lambda name: lower.get(name.lower())


def test_cron_bearer_accepts_the_secret_and_refuses_everything_else() -> None:
    auth = CronAuth(secret="s" * 20)
    auth.check("Bearer " + "s" * 20)
    auth.check("bearer " + "s" * 20)
    for bad in (
        None,
        "",
        "Bearer",
        "Bearer " + "s" * 19,
        "Basic " + "s" * 20,
        "s" * 20,
        "Bearer x" + "s" * 20,
    ):
        with pytest.raises(Unauthorized):
            auth.check(bad)


def test_cron_routes_without_a_secret_refuse_rather_than_run_open() -> None:
    with pytest.raises(NotConfigured, match="CRON_SECRET"):
        CronAuth(secret=None).check("Bearer anything")
    with pytest.raises(NotConfigured):
        CronAuth(secret="").check(None)


def test_a_body_signed_by_the_reference_library_is_accepted() -> None:
    auth = WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None)
    auth.verify(getter(signed(BODY)), BODY)


def test_our_signature_verifies_with_the_reference_library() -> None:
    from ingress.auth import sign

    at = datetime.now(UTC)
    key = Webhook(SIGNING_SECRET)._whsecret  # the decoded key, as the library holds it
    ours = "v1," + sign(key, "msg_9", int(at.timestamp()), BODY)
    headers = {
        "webhook-id": "msg_9",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": ours,
    }
    Webhook(SIGNING_SECRET).verify(BODY, headers)


@pytest.mark.parametrize("position", [0, len(BODY) // 2, len(BODY) - 1])
def test_a_one_byte_change_to_the_body_is_rejected(position: int) -> None:
    auth = WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None)
    headers = getter(signed(BODY))
    changed = bytearray(BODY)
    changed[position] ^= 0x01
    with pytest.raises(Unauthorized, match="signature"):
        auth.verify(headers, bytes(changed))


def test_any_of_several_signatures_may_match_so_secrets_can_rotate() -> None:
    auth = WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None)
    good = signed(BODY)
    old = signed(BODY, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY")["webhook-signature"]
    headers = {**good, "webhook-signature": f"{old} v2,ignored {good['webhook-signature']}"}
    auth.verify(getter(headers), BODY)
    with pytest.raises(Unauthorized):
        auth.verify(getter({**good, "webhook-signature": old}), BODY)


@pytest.mark.parametrize("skew_s", [-301, 301, 3600])
def test_a_timestamp_outside_the_tolerance_is_rejected(skew_s: int) -> None:
    auth = WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None, tolerance_s=300)
    at = datetime.now(UTC) + timedelta(seconds=skew_s)
    with pytest.raises(Unauthorized, match="timestamp"):
        auth.verify(getter(signed(BODY, at=at)), BODY)


def test_the_tolerance_is_configurable() -> None:
    at = datetime.now(UTC) - timedelta(seconds=100)
    WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None, tolerance_s=300).verify(
        getter(signed(BODY, at=at)), BODY
    )
    with pytest.raises(Unauthorized):
        WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None, tolerance_s=60).verify(
            getter(signed(BODY, at=at)), BODY
        )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_signature_header_is_rejected(missing: str) -> None:
    headers = signed(BODY)
    del headers[missing]
    with pytest.raises(Unauthorized, match="missing"):
        WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None).verify(getter(headers), BODY)


def test_a_signature_made_for_another_message_id_is_rejected() -> None:
    headers = {**signed(BODY, msg_id="msg_1"), "webhook-id": "msg_2"}
    with pytest.raises(Unauthorized):
        WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=None).verify(getter(headers), BODY)


def test_the_shared_secret_is_the_alternative_when_no_signing_secret_is_set() -> None:
    auth = WebhookAuth(signing_secret=None, shared_secret=SHARED_SECRET)
    auth.verify(getter({"X-Webhook-Secret": SHARED_SECRET}), BODY)
    for bad in ({}, {"X-Webhook-Secret": SHARED_SECRET[:-1]}, {"X-Webhook-Secret": ""}):
        with pytest.raises(Unauthorized):
            auth.verify(getter(bad), BODY)


def test_with_a_signing_secret_the_shared_secret_alone_is_not_enough() -> None:
    auth = WebhookAuth(signing_secret=SIGNING_SECRET, shared_secret=SHARED_SECRET)
    with pytest.raises(Unauthorized):
        auth.verify(getter({"X-Webhook-Secret": SHARED_SECRET}), BODY)


def test_webhooks_without_any_secret_refuse_rather_than_run_open() -> None:
    with pytest.raises(NotConfigured):
        WebhookAuth(signing_secret=None, shared_secret=None).verify(getter({}), BODY)
