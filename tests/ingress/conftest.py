"""Fixtures of the ingress tests: the app over a real runtime, with the secrets set and recording handlers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from falcon import testing
from pydantic import SecretStr
from sqlalchemy import func, select, text

from offload.settings import Settings
from offload.web import make_app
from offload.wiring import Runtime, build
from store.models import Run, WebhookEvent
from tests.services import Rabbit
from tests.support.jobs import TEST_REGISTRY
from tests.support.webhooks import CRON_SECRET, RECORDING_PORTS, SIGNING_SECRET

AUTH = {"Authorization": f"Bearer {CRON_SECRET}"}
DRAIN_QUEUE = "offload.webhook-drain"


def with_secrets(settings: Settings, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "cron_secret": SecretStr(CRON_SECRET),
        "webhook_signing_secret": SecretStr(SIGNING_SECRET),
    }
    values.update(update)
    return settings.model_copy(update=values)


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    return with_secrets(settings)


@pytest.fixture
def web_runtime(web_settings: Settings) -> Iterator[Runtime]:
    rt = build(web_settings, registry=TEST_REGISTRY, ports=RECORDING_PORTS)
    yield rt
    rt.close()


@pytest.fixture
def client(web_runtime: Runtime) -> testing.TestClient:
    return testing.TestClient(make_app(web_runtime))


def stored_events(runtime: Runtime) -> list[WebhookEvent]:
    with runtime.sessions() as s:
        return list(s.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))


def run_count(runtime: Runtime, job: str | None = None) -> int:
    query = select(func.count()).select_from(Run)
    if job is not None:
        query = query.where(Run.job == job)
    with runtime.sessions() as s:
        return int(s.execute(query).scalar_one())


def effects_of(runtime: Runtime, provider_event_id: str) -> int:
    with runtime.engine.connect() as conn:
        q = text("SELECT count(*) FROM test_effects WHERE dispatch_key = :k")
        return int(conn.execute(q, {"k": provider_event_id}).scalar_one())


def queued_messages(rabbit: Rabbit, queue: str) -> int:
    """Messages in `queue`; 0 when nothing was ever published to it (the queue does not exist)."""
    import pika.exceptions

    try:
        return rabbit.message_count(queue)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
