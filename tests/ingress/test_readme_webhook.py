"""The README's hand-sent webhook works as written: accepted, then processed for the demo's client."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from urllib.parse import urlsplit

from falcon import testing
from pydantic import SecretStr

from offload.demo import WORKSPACE, seed
from offload.settings import Settings
from offload.web import make_app
from offload.wiring import build
from store.local_providers import LocalCalendar
from tests.ingress.conftest import stored_events, with_secrets
from tests.support.jobs import TEST_REGISTRY
from tests.support.procs import ROOT

SECRET = "s" * 32


def readme_curl() -> tuple[str, dict[str, str], str]:
    """(path, headers, body) of the README's curl command."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"^curl .*?\}\}'$", text, re.MULTILINE | re.DOTALL)
    assert command is not None, "the README shows no webhook curl command"
    words = shlex.split(command.group(0).replace("\\\n", " "))
    url = next(w for w in words if w.startswith("http://"))
    headers = dict(
        words[i + 1].replace("$OFFLOAD_WEBHOOK_SHARED_SECRET", SECRET).split(": ", 1)
        for i, w in enumerate(words)
        if w == "-H"
    )
    body = words[words.index("-d") + 1]
    return urlsplit(url).path, headers, body


def test_the_readmes_webhook_example_is_accepted_and_processed(settings: Settings) -> None:
    shared = with_secrets(settings, webhook_signing_secret=None, webhook_shared_secret=SecretStr(SECRET))
    runtime = build(shared, registry=TEST_REGISTRY)
    try:
        seed(runtime.uow, LocalCalendar(runtime.sessions), now=datetime.now(UTC))
        path, headers, body = readme_curl()
        assert WORKSPACE in body
        answer = testing.TestClient(make_app(runtime)).simulate_post(path, headers=headers, body=body)
        assert answer.status_code == 202, answer.text
        [event] = stored_events(runtime)
        d = runtime.dispatcher.dispatch(
            "webhook-drain", trigger="cli", params={"event_id": event.id}, inline=True
        )
        assert d.status == "succeeded"
        assert [e.status for e in stored_events(runtime)] == ["processed"], stored_events(runtime)[
            0
        ].status_reason
    finally:
        runtime.close()
