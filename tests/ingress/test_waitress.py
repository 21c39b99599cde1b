"""The ingress on a real waitress server: `offload web` as a process, driven over HTTP."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from offload.settings import Settings
from offload.web import make_server, serve
from offload.wiring import Runtime
from tests.ingress.conftest import AUTH, queued_messages, stored_events
from tests.services import Rabbit
from tests.support.procs import ROOT, Workers, env_for, run_cli, wait_for
from tests.support.webhooks import CRON_SECRET, SIGNING_SECRET, encode, payload, signed

LISTENING = re.compile(r"listening on http://([^:]+):(\d+)")
WEBHOOK = "/api/webhooks/email"


@contextmanager
def web_process(
    settings: Settings, tmp_path: Path, *, module: str = "offload", **env: str
) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    log = tmp_path / f"web-{module}.log"
    args = (
        [sys.executable, "-m", module, "web", "--port", "0"]
        if module == "offload"
        else [sys.executable, "-m", module, "--port", "0"]
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env_for(
                settings,
                OFFLOAD_CRON_SECRET=CRON_SECRET,
                OFFLOAD_WEBHOOK_SIGNING_SECRET=SIGNING_SECRET,
                **env,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        match = wait_for(
            lambda: LISTENING.search(log.read_text()) or proc.poll() is not None, what="web start"
        )
        assert proc.poll() is None, log.read_text()
        yield int(match.group(2)), proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


def test_offload_web_accepts_a_signed_webhook_and_answers_json_everywhere(
    settings: Settings, runtime: Runtime, rabbit: Rabbit, tmp_path: Path
) -> None:
    with web_process(settings, tmp_path) as (port, proc, log):
        body = encode(payload("evt-waitress"))
        status, headers, answer = request(port, "POST", "/api/webhooks/email", body, signed(body))
        assert status == 202 and answer["queued"] is True
        assert headers["x-correlation-id"]
        [event] = stored_events(runtime)
        assert event.id == answer["id"] and event.provider_event_id == "evt-waitress"
        assert queued_messages(rabbit, "offload.webhook-drain") == 1

        tampered = body.replace(b"evt-waitress", b"evt-waitressX")
        status, _, answer = request(port, "POST", "/api/webhooks/email", tampered, signed(body))
        assert status == 401 and answer["error"]["code"] == "unauthorized"

        big = b"x" * (settings.webhook_body_cap_bytes + 1)
        status, _, answer = request(port, "POST", "/api/webhooks/email", big, signed(big))
        assert status == 413 and answer["error"]["code"] == "payload_too_large"

        assert request(port, "GET", "/healthz")[0] == 200
        status, _, answer = request(port, "GET", "/readyz")
        assert status == 200 and answer["checks"] == {"database": "ok", "broker": "ok"}
        assert request(port, "GET", "/openapi.json")[2]["openapi"] == "3.1.0"
        assert len(stored_events(runtime)) == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "offload web stopped" in log.read_text()


def test_fifty_concurrent_calls_of_a_cron_route_in_one_slot_give_one_run(
    settings: Settings, runtime: Runtime, rabbit: Rabbit, workers: Workers, tmp_path: Path
) -> None:
    with web_process(settings, tmp_path) as (port, _, _):
        # The slot is the minute: keep the burst away from a minute boundary.
        while not 1 <= datetime.now(UTC).second <= 45:
            time.sleep(0.5)
        gate = threading.Barrier(50)

        def call(_: int) -> tuple[int, Any]:
            gate.wait()
            status, _, answer = request(port, "GET", "/api/cron/background-jobs", headers=AUTH)
            return status, answer

        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(call, range(50)))
    assert [status for status, _ in answers] == [202] * 50
    dispatches = [answer["dispatch"] for _, answer in answers]
    assert len({d["dispatchKey"] for d in dispatches}) == 1
    assert sorted(d["duplicate"] for d in dispatches) == [False] + [True] * 49
    [run] = runtime.ledger.runs(job="background-jobs")
    assert run.duplicates == 49 and run.trigger == "http"
    assert queued_messages(rabbit, "offload.background-jobs") == 1
    workers.start(threads=2)
    wait_for(lambda: (r := runtime.ledger.get(run.dispatch_key)) and r.status == "succeeded", what="the run")
    assert runtime.ledger.get(run.dispatch_key).attempt == 1  # type: ignore[union-attr]


def test_sigterm_lets_a_request_in_flight_finish_then_stops(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    with web_process(
        settings, tmp_path, module="tests.support.web", OFFLOAD_WEBHOOK_INLINE_TYPES="EMAIL_SENT"
    ) as (port, proc, log):
        body = encode(payload("evt-slow", email="slow@example.com"))
        outcome: dict[str, Any] = {}

        def slow_request() -> None:
            outcome["answer"] = request(port, "POST", "/api/webhooks/email", body, signed(body))

        sender = threading.Thread(target=slow_request)
        sender.start()
        wait_for(lambda: len(stored_events(runtime)) == 1, what="the event to be stored")
        proc.send_signal(signal.SIGTERM)
        sender.join(timeout=20)
        status, _, answer = outcome["answer"]
        assert status == 200 and answer["status"] == "processed", answer
        assert proc.wait(timeout=20) == 0, log.read_text()
        assert "offload web stopped" in log.read_text()
    [event] = stored_events(runtime)
    assert event.status == "processed"


@contextmanager
def server_over_sink(cap: int) -> Iterator[int]:
    """`make_server` over an app that reads the body and answers 204: only the server refuses."""

    def sink(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        start_response("204 No Content", [])
        return []

    server = make_server(sink, body_cap_bytes=cap, host="127.0.0.1", port=0, threads=2)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server,), kwargs={"stop": stop, "drain_s": 1.0})
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        stop.set()
        server.pull_trigger()
        thread.join(timeout=15)


def raw_exchange(port: int, head: list[str], body: bytes = b"") -> tuple[str, dict[str, str], bytes]:
    """Send `head` (the request line and headers) and `body` as they are; the status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1") + body)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status, _, rest = raw.partition(b"\r\n")
    fields, _, data = rest.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in fields.decode("latin-1").lower().split("\r\n"))
    return status.decode(), headers, data


def test_the_server_refuses_an_announced_body_over_the_cap_before_reading_it_in_the_json_shape() -> None:
    cap = 1000
    with server_over_sink(cap) as port:
        post = [f"POST {WEBHOOK} HTTP/1.1", "Host: x"]
        # Headers only: the server answers without waiting for the announced body.
        status, headers, data = raw_exchange(port, [*post, f"Content-Length: {cap + 1}"])
        assert status == "HTTP/1.1 413 Request Entity Too Large"
        assert headers["content-type"] == "application/json" and headers["x-correlation-id"]
        assert json.loads(data) == {
            "error": {
                "code": "payload_too_large",
                "message": f"the body is larger than {cap} bytes",
                "details": {"limit_bytes": cap},
            }
        }
        assert (
            raw_exchange(port, [*post, f"Content-Length: {cap}"], b"x" * cap)[0] == "HTTP/1.1 204 No Content"
        )
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (cap + 1, b"x" * (cap + 1))
        status, _, data = raw_exchange(port, [*post, "Transfer-Encoding: chunked"], chunked)
        assert status.startswith("HTTP/1.1 413") and json.loads(data)["error"]["code"] == "payload_too_large"
        status, headers, data = raw_exchange(port, [*post, "Content-Length: ten"])
        assert status == "HTTP/1.1 400 Bad Request" and headers["content-type"] == "application/json"
        assert json.loads(data)["error"]["code"] == "bad_request"


def test_a_port_in_use_is_one_line_and_exit_2(settings: Settings) -> None:
    """Not a traceback, and not a crash `offload dev` would restart in a loop."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "offload", "web", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env_for(settings, OFFLOAD_CRON_SECRET=CRON_SECRET),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"offload: cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--host", "999.1.1.1"), {}), ((), {"OFFLOAD_WEB_HOST": "999.1.1.1"})],
    ids=["option", "setting"],
)
def test_a_host_that_is_not_an_address_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    database = {"OFFLOAD_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}"}
    result = run_cli(database | env, "web", "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "offload: cannot listen on 999.1.1.1:0 (not an address); set --host or OFFLOAD_WEB_HOST"
    )
