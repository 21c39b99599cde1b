"""`offload bench ingress`: signed EMAIL_SENT webhooks against `offload web`, beside a bare Falcon app.

A third server, the floor, is the bare app plus one commit and one confirmed publish per request.
All servers are waitress with the same thread count, measured in the same run by the same load
generator (another process: threads with keep-alive http.client connections). Every accepted event
is then looked up in the database, and the drain messages are counted on RabbitMQ. The CPU each
request costs is given for the server, the load generator and the local PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import click

from offload.proc_cpu import process_cpu_s, server_cpu_s, server_ticks
from offload.settings import Settings, redact

WEBHOOK_PATH = "/api/webhooks/email"
_LISTENING = re.compile(r"listening on http://([^:]+):(\d+)")


@dataclass(frozen=True)
class LoadResult:
    sent: int
    accepted_ids: list[str]
    statuses: dict[str, int]
    queued: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return len(self.accepted_ids) / self.elapsed_s if self.elapsed_s else 0.0

    def figures(self, cpu_ms: dict[str, float]) -> dict[str, Any]:
        """One server's entry in the JSON report."""
        return {
            "rate": self.rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "statuses": self.statuses,
            "server_cpu_ms_per_request": cpu_ms["server"],
            "other_cpu_ms_per_request": {k: v for k, v in cpu_ms.items() if k != "server"},
        }


# -- the load generator (a process of its own) ---------------------------------------------------


def event_body(event_id: str, n: int) -> bytes:
    return json.dumps(
        {
            "event": {"id": event_id, "type": "EMAIL_SENT", "created_at": "2026-01-05T09:00:00Z"},
            "workspace_id": "ws-bench",
            "lead": {"email": f"lead{n % 500}@example.com", "id": f"lead-{n % 500}", "first_name": "Ada"},
            "message": {
                "id": f"msg-{event_id}",
                "thread_id": f"thr-{n}",
                "subject": "Quick question about your calendar",
                "at": "2026-01-05T09:00:00Z",
                "sequence_step": 1,
            },
        }
    ).encode()


def signed_requests(*, secret: str, prefix: str, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """Bodies signed ahead of time, so signing costs the measurement nothing."""
    import hashlib
    import hmac

    key = base64.b64decode(secret.removeprefix("whsec_"))
    now_s = int(time.time())
    out = []
    for n in range(count):
        event_id = f"{prefix}-{n}"
        body = event_body(event_id, n)
        msg_id = f"msg_{event_id}"
        digest = hmac.new(key, f"{msg_id}.{now_s}.".encode() + body, hashlib.sha256).digest()
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(now_s),
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }
        out.append((event_id, body, headers))
    return out


def drive(
    *, host: str, port: int, connections: int, requests: list[tuple[str, bytes, dict[str, str]]]
) -> LoadResult:
    """Send every request once over `connections` keep-alive connections; time the whole batch."""
    next_index = itertools.count()
    lock = threading.Lock()
    latencies_s: list[float] = []
    accepted: list[str] = []
    statuses: dict[str, int] = {}
    queued = 0
    start = threading.Barrier(connections + 1)

    def worker() -> None:
        nonlocal queued
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[tuple[float, str, int, bool]] = []
        start.wait()
        while (i := next(next_index)) < len(requests):
            event_id, body, headers = requests[i]
            began = time.perf_counter()
            try:
                conn.request("POST", WEBHOOK_PATH, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                status, data = 0, b""
            took = time.perf_counter() - began
            was_queued = status == 202 and json.loads(data).get("queued") is True
            mine.append((took, event_id, status, was_queued))
        conn.close()
        with lock:
            for took, event_id, status, was_queued in mine:
                latencies_s.append(took)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 202:
                    accepted.append(event_id)
                queued += was_queued

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed_s = time.perf_counter() - began
    latencies_s.sort()
    return LoadResult(
        sent=len(requests),
        accepted_ids=accepted,
        statuses=statuses,
        queued=queued,
        elapsed_s=elapsed_s,
        p50_ms=_percentile(latencies_s, 0.50) * 1000,
        p99_ms=_percentile(latencies_s, 0.99) * 1000,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def load_main(argv: list[str]) -> None:
    """`python -m offload.bench_ingress load HOST PORT CONNECTIONS COUNT WARMUP PREFIX` (secret on stdin)."""
    host, port, connections, count, warmup, prefix = argv
    secret = sys.stdin.readline().strip()
    warm = signed_requests(secret=secret, prefix=f"{prefix}-warm", count=int(warmup))
    drive(host=host, port=int(port), connections=int(connections), requests=warm)
    measured = signed_requests(secret=secret, prefix=prefix, count=int(count))
    result = drive(host=host, port=int(port), connections=int(connections), requests=measured)
    json.dump(result.__dict__, sys.stdout)


# -- the bare baseline ---------------------------------------------------------------------------


def echo_main(argv: list[str]) -> None:
    """`python -m offload.bench_ingress echo THREADS`: a Falcon app that parses the JSON and answers 202."""
    import falcon

    class Echo:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            event = req.get_media()
            resp.status = falcon.HTTP_202
            resp.media = {"id": event["event"]["id"], "queued": True}

    _serve(Echo(), threads=int(argv[0]), ident="echo")


FLOOR_TABLE = "offload_bench_floor"
FLOOR_QUEUE = "offload-bench.floor"


def floor_main(argv: list[str]) -> None:
    """`python -m offload.bench_ingress floor THREADS`: the least an accepted webhook must cost.

    The echo plus what "stored and queued" needs before the answer: the body committed as one row
    by one statement in autocommit (one round trip, on the same store, through offload's own
    executor on PostgreSQL) and one persistent message published with a confirm.
    """
    import dramatiq
    import falcon
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from sqlalchemy import Column, Integer, MetaData, Table, Text

    from store.db import Direct, PgStatement, make_engine

    settings = Settings.load()
    engine = make_engine(settings.database_url)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    direct = Direct(engine)
    pg_insert = PgStatement(f"INSERT INTO {FLOOR_TABLE} (body) VALUES (%(body)s) RETURNING id")
    table = Table(
        FLOOR_TABLE, MetaData(), Column("id", Integer, primary_key=True), Column("body", Text, nullable=False)
    )
    table.create(engine, checkfirst=True)
    insert = table.insert().returning(table.c.id)
    broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    drain = dramatiq.actor(broker=broker, actor_name="bench_floor", queue_name=FLOOR_QUEUE)(lambda i: None)

    class Floor:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            body = req.bounded_stream.read()
            event = json.loads(body)
            if engine.dialect.name == "postgresql":  # as offload's own intake statements run
                (row_id,) = direct.run(pg_insert, {"body": body.decode()})
            else:
                with autocommit.connect() as conn:
                    row_id = conn.execute(insert, {"body": body.decode()}).scalar_one()
            drain.send(row_id)
            resp.status = falcon.HTTP_202
            resp.media = {"id": event["event"]["id"], "queued": True}

    _serve(Floor(), threads=int(argv[0]), ident="floor")


def _serve(resource: object, *, threads: int, ident: str) -> None:
    import logging

    import falcon
    from waitress.server import create_server

    app = falcon.App()
    app.add_route(WEBHOOK_PATH, resource)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server = create_server(app, host="127.0.0.1", port=0, threads=threads, ident=ident)
    port = server.effective_port  # type: ignore[union-attr]
    print(f"{ident} listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()


# -- the command ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(args: list[str], env: dict[str, str], log: Path) -> Iterator[tuple[str, int, int]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            match = _LISTENING.search(log.read_text(errors="replace"))
            if match:
                yield match.group(1), int(match.group(2)), proc.pid
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"{args[2:4]} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _measured(
    server: tuple[str, int, int], *, connections: int, count: int, warmup: int, secret: str
) -> tuple[LoadResult, dict[str, float]]:
    """The load's result, and CPU milliseconds per request (warm-up included) of the server, of the
    load generator and of the local PostgreSQL and RabbitMQ."""
    host, port, pid = server
    before, load_before, servers = process_cpu_s(pid), _children_cpu_s(), server_ticks()
    result = _load(host, port, connections=connections, count=count, warmup=warmup, secret=secret)
    used = {
        "server": process_cpu_s(pid) - before,
        "load": _children_cpu_s() - load_before,  # the load generator, a child that has ended
        **server_cpu_s(servers, server_ticks()),
    }
    return result, {name: s * 1000 / (count + warmup) for name, s in used.items()}


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load(host: str, port: int, *, connections: int, count: int, warmup: int, secret: str) -> LoadResult:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    args = [str(a) for a in (host, port, connections, count, warmup, prefix)]
    done = subprocess.run(
        [sys.executable, "-m", "offload.bench_ingress", "load", *args],
        input=secret + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise click.ClickException(f"the load generator failed:\n{done.stderr[-2000:]}")
    return LoadResult(**json.loads(done.stdout))


class _Vhost:
    """A RabbitMQ vhost of the run's own, so the drain messages it publishes touch nothing else."""

    def __init__(self, settings: Settings) -> None:
        import requests

        self.requests = requests
        api = urlsplit(settings.management_url)
        self.auth = (api.username or "guest", api.password or "guest")
        self.api = f"{api.scheme}://{api.hostname}" + (f":{api.port}" if api.port else "")
        self.name = f"offload-bench-ingress-{uuid.uuid4().hex[:8]}"
        broker = urlsplit(settings.broker_url)
        self.user = broker.username or "guest"
        self.broker_url = urlunsplit(broker._replace(path="/" + quote(self.name, safe="")))

    def __enter__(self) -> _Vhost:
        path = quote(self.name, safe="")
        self.requests.put(f"{self.api}/api/vhosts/{path}", auth=self.auth, timeout=10).raise_for_status()
        self.requests.put(
            f"{self.api}/api/permissions/{path}/{quote(self.user, safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=self.auth,
            timeout=10,
        ).raise_for_status()
        return self

    def __exit__(self, *exc: object) -> None:
        self.requests.delete(f"{self.api}/api/vhosts/{quote(self.name, safe='')}", auth=self.auth, timeout=10)

    def message_count(self, queue: str) -> int:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()


def _drop_floor_table(database_url: str) -> None:
    from sqlalchemy import text

    from store.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {FLOOR_TABLE}"))
    finally:
        engine.dispose()


def _stored(database_url: str, event_ids: list[str]) -> int:
    from sqlalchemy import func, select

    from store.db import make_engine
    from store.models import WebhookEvent

    engine = make_engine(database_url)
    try:
        found = 0
        with engine.connect() as conn:
            for i in range(0, len(event_ids), 500):
                chunk = event_ids[i : i + 500]
                query = select(func.count()).where(WebhookEvent.provider_event_id.in_(chunk))
                found += int(conn.execute(query).scalar_one())
        return found
    finally:
        engine.dispose()


@click.command("ingress")
@click.option("--count", default=3000, show_default=True, help="Measured webhooks per server.")
@click.option("--warmup", default=300, show_default=True, help="Unmeasured webhooks first.")
@click.option("--connections", default=16, show_default=True, help="Concurrent keep-alive connections.")
@click.option("--threads", default=8, show_default=True, help="waitress threads of both servers.")
@click.option("--database-url", help="Store of `offload web` (default: a fresh SQLite file).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def ingress(
    count: int, warmup: int, connections: int, threads: int, database_url: str | None, as_json: bool
) -> None:
    """Signed EMAIL_SENT webhooks against `offload web` and a bare Falcon app, same run, same load."""
    settings = Settings.load()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp, _Vhost(settings) as vhost:
        workdir = Path(tmp)
        db_url = database_url or f"sqlite:///{workdir / 'bench.db'}"
        env = dict(
            os.environ,
            OFFLOAD_DATABASE_URL=db_url,
            OFFLOAD_BROKER_URL=vhost.broker_url,
            OFFLOAD_WEBHOOK_SIGNING_SECRET=secret,
            OFFLOAD_WEB_THREADS=str(threads),
        )
        click.echo(
            f"offload web on {redact(db_url)} and RabbitMQ vhost {vhost.name}; bare Falcon echo; "
            f"{connections} connections, {warmup} warm-up + {count} measured webhooks each",
            err=True,
        )
        echo_args = [sys.executable, "-m", "offload.bench_ingress", "echo", str(threads)]

        def measured(server: tuple[str, int, int]) -> tuple[LoadResult, dict[str, float]]:
            return _measured(server, connections=connections, count=count, warmup=warmup, secret=secret)

        with _server(echo_args, env, workdir / "echo.log") as server:
            bare, bare_cpu_ms = measured(server)
        floor_args = [sys.executable, "-m", "offload.bench_ingress", "floor", str(threads)]
        with _server(floor_args, env, workdir / "floor.log") as server:
            floor, floor_cpu_ms = measured(server)
        _drop_floor_table(db_url)
        web_args = [sys.executable, "-m", "offload", "web", "--port", "0"]
        with _server(web_args, env, workdir / "web.log") as server:
            ours, ours_cpu_ms = measured(server)
        stored = _stored(db_url, ours.accepted_ids)
        in_queue = vhost.message_count("offload.webhook-drain")
    ratio = ours.rate / bare.rate if bare.rate else 0.0
    cores = len(os.sched_getaffinity(0))
    cpu_by_side = {"bare": bare_cpu_ms, "floor": floor_cpu_ms, "offload": ours_cpu_ms}
    bound = {name: cores * 1000 / sum(cpu.values()) for name, cpu in cpu_by_side.items()}
    floor_ratio = floor.rate / bare.rate if bare.rate else 0.0
    lost = len(ours.accepted_ids) - stored
    figures = {
        "connections": connections,
        "threads": threads,
        "count": count,
        "database": urlsplit(db_url).scheme,
        "bare": bare.figures(bare_cpu_ms),
        "floor": floor.figures(floor_cpu_ms),
        "offload": {
            **ours.figures(ours_cpu_ms),
            "accepted": len(ours.accepted_ids),
            "queued": ours.queued,
            "stored": stored,
            "drain_messages": in_queue,
        },
        "ratio": ratio,
        "floor_ratio": floor_ratio,
        "cores": cores,
        "cpu_bound_rate": bound,
        "lost": lost,
        "targets": {"ratio>=0.5": ratio >= 0.5, "p99<=50ms": ours.p99_ms <= 50, "lost==0": lost == 0},
    }
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        servers = sorted(k for k in ours_cpu_ms if k != "server")
        head = "".join(f" {name[:8] + ' ms':>11}" for name in servers)
        click.echo(f"{'':10} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10}{head}  answers")
        sides = (("bare", bare, bare_cpu_ms), ("floor", floor, floor_cpu_ms), ("offload", ours, ours_cpu_ms))
        for name, r, cpu in sides:
            cols = f"{cpu['server']:10.2f}" + "".join(f" {cpu.get(server, 0.0):11.2f}" for server in servers)
            click.echo(f"{name:10} {r.rate:9.0f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {cols}  {r.statuses}")
        click.echo(
            f"ratio {ratio:.2f} (target >= 0.5); floor ratio {floor_ratio:.2f} (one commit and one confirmed "
            "publish per request: a ceiling for any server that stores and queues before answering)"
        )
        click.echo(
            f"CPU-bound rate on {cores} cores (all the CPU above per request): "
            + ", ".join(f"{name} {rate:.0f} ev/s" for name, rate in bound.items())
            + f"; offload's is {bound['offload'] / bound['bare']:.2f} x bare's"
        )
        click.echo(
            f"accepted {len(ours.accepted_ids)}, stored {stored}, "
            f"lost {lost}; queued {ours.queued}, drain messages on RabbitMQ {in_queue}"
        )
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    {"load": load_main, "echo": echo_main, "floor": floor_main}[sys.argv[1]](sys.argv[2:])
