"""A server that goes silent (cable pulled): statements and publishes fail in bounded time, never hang."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from actors.broker import TCP_USER_TIMEOUT_MS
from store import db
from tests.services import Postgres, Rabbit
from tests.support.island import Island, require_islands
from tests.support.procs import ROOT
from tests.support.proxy import Proxy


def test_the_engine_sets_tcp_timeouts_unless_the_url_names_them(postgres: Postgres) -> None:
    engine = db.make_engine(f"{postgres.url}?tcp_user_timeout=1000")
    try:
        assert engine.url.query == {**db.PG_CONNECT_DEFAULTS, "tcp_user_timeout": "1000"}
        with engine.connect() as conn:
            assert conn.connection.driver_connection.info.get_parameters()["tcp_user_timeout"] == "1000"
    finally:
        engine.dispose()


@pytest.fixture
def island() -> Iterator[Island]:
    require_islands()
    isle = Island()
    try:
        isle.create()
        yield isle
    finally:
        isle.delete()


@pytest.mark.slow
def test_statements_sent_to_a_silent_server_fail_as_unavailable_within_the_tcp_timeout(
    postgres: Postgres, island: Island
) -> None:
    # The client runs in the island; PostgreSQL stays here, behind a proxy on the island's link.
    proxy = Proxy("127.0.0.1", make_url(postgres.url).port or 5432, listen_host=island.host_ip)
    url = make_url(postgres.url).set(host=island.host_ip, port=proxy.port)  # offload's TCP defaults
    client = island.popen(
        [sys.executable, "-m", "tests.support.two_paths", url.render_as_string(hide_password=False)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ready"
        island.pull_cable()
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=90)  # without a TCP timeout each would wait ~15 minutes
    finally:
        client.kill()
        proxy.close()
    outcomes = {o["path"]: o for o in map(json.loads, out.splitlines())}
    assert set(outcomes) == {"direct", "pool"}
    for outcome in outcomes.values():
        assert outcome["error"].startswith("StoreUnavailable: "), outcome
        timeout_s = int(db.PG_CONNECT_DEFAULTS["tcp_user_timeout"]) / 1000
        assert timeout_s <= outcome["s"] < timeout_s + 15, outcome


@pytest.mark.slow
def test_a_publish_to_a_silent_broker_loses_its_connection_within_the_tcp_timeout(
    rabbit: Rabbit, island: Island
) -> None:
    """The heartbeat alone notices after 60 to 90 s. dramatiq's enqueue then tries to reconnect
    (up to five times) before the Dispatcher's PublishFailed: about a minute in all, here."""
    proxy = Proxy("127.0.0.1", 5672, listen_host=island.host_ip)
    url = rabbit.url.replace("127.0.0.1:5672", f"{island.host_ip}:{proxy.port}", 1)
    client = island.popen(
        [sys.executable, "-m", "tests.support.publish_twice", url],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "ready"
        island.pull_cable()
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=90)
    finally:
        client.kill()
        proxy.close()
    outcome = json.loads(out)
    assert outcome["error"] is not None, outcome
    timeout_s = TCP_USER_TIMEOUT_MS / 1000
    assert timeout_s <= outcome["s"] < timeout_s + 15, outcome
