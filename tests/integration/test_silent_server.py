"""A server that goes silent (cable pulled): statements and publishes fail in bounded time, never hang."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import make_url

from actors.amqp_url import TCP_USER_TIMEOUT_MS
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


def across_a_pulled_cable(island: Island, port: int, module: str, url_at: Callable[[int], str]) -> str:
    """Run `python -m module URL` in the island against the server on this host's `port` (through a
    proxy on the island's link, at the port `url_at` is given); once it prints `ready`, pull the
    cable, tell it to go on, and return what it prints then."""
    proxy = Proxy("127.0.0.1", port, listen_host=island.host_ip)
    client = island.popen(
        [sys.executable, "-m", module, url_at(proxy.port)],
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
        # Without a TCP timeout: a quarter of an hour for PostgreSQL, the heartbeat's 60-90 s for RabbitMQ.
        out, _ = client.communicate(timeout=90)
    finally:
        client.kill()
        proxy.close()
    return out


@pytest.mark.slow
def test_statements_sent_to_a_silent_server_fail_as_unavailable_within_the_tcp_timeout(
    postgres: Postgres, island: Island
) -> None:
    url = make_url(postgres.url)  # with offload's TCP defaults
    out = across_a_pulled_cable(
        island,
        url.port or 5432,
        "tests.support.two_paths",
        lambda port: url.set(host=island.host_ip, port=port).render_as_string(hide_password=False),
    )
    outcomes = {o["path"]: o for o in map(json.loads, out.splitlines())}
    assert set(outcomes) == {"direct", "pool"}
    timeout_s = int(db.PG_CONNECT_DEFAULTS["tcp_user_timeout"]) / 1000
    for outcome in outcomes.values():
        assert outcome["error"].startswith("StoreUnavailable: "), outcome
        assert timeout_s <= outcome["s"] < timeout_s + 15, outcome


@pytest.mark.slow
def test_a_publish_to_a_silent_broker_loses_its_connection_within_the_tcp_timeout(
    rabbit: Rabbit, island: Island
) -> None:
    """dramatiq's enqueue then tries to reconnect (up to five times) before the Dispatcher's
    PublishFailed."""
    out = across_a_pulled_cable(
        island,
        5672,
        "tests.support.publish_twice",
        lambda port: rabbit.url.replace("127.0.0.1:5672", f"{island.host_ip}:{port}", 1),
    )
    outcome = json.loads(out)
    assert outcome["error"] is not None, outcome
    timeout_s = TCP_USER_TIMEOUT_MS / 1000
    assert timeout_s <= outcome["s"] < timeout_s + 15, outcome
