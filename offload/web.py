"""`offload web`: the ingress app on waitress, wired from settings, stopped gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click

from offload.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

#: How long a stopping server keeps serving the requests it already has.
DRAIN_S = 10.0
BROKER_PROBE_TIMEOUT_S = 2.0


def make_app(runtime: Any) -> Any:
    """The Falcon app over a built Runtime (offload.wiring.build)."""
    from ingress.app import create_app
    from ingress.auth import CronAuth, WebhookAuth
    from ingress.intake import WebhookIntake

    settings: Settings = runtime.settings

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    return create_app(
        dispatcher=runtime.dispatcher,
        intake=WebhookIntake(
            store=runtime.webhook_store,
            uow=runtime.uow,
            dispatcher=runtime.dispatcher,
            inline_types=settings.webhook_inline_types,
        ),
        cron_auth=CronAuth(secret=secret(settings.cron_secret)),
        webhook_auth=WebhookAuth(
            signing_secret=secret(settings.webhook_signing_secret),
            shared_secret=secret(settings.webhook_shared_secret),
            tolerance_s=settings.webhook_tolerance_s,
        ),
        probes={"database": runtime.ping_database, "broker": broker_probe(settings.broker_url)},
        body_cap_bytes=settings.webhook_body_cap_bytes,
    )


def broker_probe(url: str, *, timeout_s: float = BROKER_PROBE_TIMEOUT_S) -> Callable[[], None]:
    """A check that opens (and closes) one AMQP connection, failing within about `timeout_s`."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(
        connection_attempts="1",
        socket_timeout=str(timeout_s),
        blocked_connection_timeout=str(timeout_s),
    )
    probe_url = urlunsplit(parts._replace(query=urlencode(query)))

    def probe() -> None:
        import pika

        pika.BlockingConnection(pika.URLParameters(probe_url)).close()

    return probe


def make_server(app: Any, *, body_cap_bytes: int, host: str, port: int, threads: int) -> Any:
    """A waitress server that refuses a body over `body_cap_bytes` itself, in the app's error shape.

    waitress reads a whole body before the app sees it, so the cap is its own limit too: a
    Content-Length over the cap is refused before the body is read. A chunked body is counted with
    its chunks' framing.
    """
    from waitress.channel import HTTPChannel
    from waitress.server import create_server
    from waitress.task import ErrorTask

    from ingress.correlation import HEADER as CORRELATION_HEADER
    from ingress.errors import PayloadTooLarge, error_body, status_code

    class JsonErrorTask(ErrorTask):
        """waitress's own refusals (a body over the cap, a malformed request) as the app's errors."""

        def execute(self) -> None:
            error: Any = cast(Any, self.request).error  # the stubs type the parser as its error
            if error.code == 413:
                too_large = PayloadTooLarge(f"the body is larger than {body_cap_bytes} bytes")
                answer = error_body(too_large.code, too_large.message, {"limit_bytes": body_cap_bytes})
            else:
                answer = error_body(status_code(error.code), error.body)
            body = json.dumps(answer).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers = [
                ("Content-Type", "application/json"),
                (CORRELATION_HEADER, uuid.uuid4().hex),
            ]
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        error_task_class = JsonErrorTask

    server: Any = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="offload",
        max_request_body_size=body_cap_bytes + 1,  # waitress refuses a length >= this
        channel_timeout=60,
        connection_limit=max(100, threads * 16),
    )
    server.channel_class = Channel
    return server


def serve(server: Any, *, stop: threading.Event, drain_s: float = DRAIN_S) -> None:
    """Run `server` until `stop` is set, then stop accepting, finish open requests (up to `drain_s`)."""
    from waitress import wasyncore

    socket_map = server._map
    timeout_s = server.adj.asyncore_loop_timeout
    while not stop.is_set():
        wasyncore.loop(timeout=timeout_s, map=socket_map, use_poll=True, count=1)
    logger.info("Stopping: no new connections; finishing requests in flight")
    wasyncore.dispatcher.close(server)  # the listening socket only; the trigger keeps waking the loop
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and any(
        channel.requests or channel.total_outbufs_len for channel in list(server.active_channels.values())
    ):
        wasyncore.loop(timeout=0.05, map=socket_map, use_poll=True, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=max(0.0, deadline - time.monotonic()))
    server.trigger.close()
    wasyncore.close_all(socket_map)


def run(runtime: Any, *, host: str, port: int, threads: int) -> None:
    """Serve `runtime` until SIGTERM or SIGINT, then stop gracefully and close the runtime."""
    # waitress warns "Task queue depth is N" whenever a request waits for a thread: routine under load.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = make_app(runtime)
    cap = runtime.settings.webhook_body_cap_bytes
    try:
        server = make_server(app, body_cap_bytes=cap, host=host, port=port, threads=threads)
    except OSError as e:
        runtime.close()
        raise SettingsError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); "
            "stop what holds it, or set OFFLOAD_WEB_PORT / OFFLOAD_WEB_HOST"
        ) from None
    except ValueError:  # waitress: the host resolves to no address
        runtime.close()
        raise SettingsError(
            f"cannot listen on {host}:{port} (not an address); set --host or OFFLOAD_WEB_HOST"
        ) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        server.pull_trigger()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"offload web listening on http://{server.effective_host}:{server.effective_port}", err=True)
    try:
        serve(server, stop=stop)
    finally:
        runtime.close()
    click.echo("offload web stopped", err=True)


@click.command()
@click.option("--host", help="Listen address (OFFLOAD_WEB_HOST).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Listen port (OFFLOAD_WEB_PORT); 0 picks a free one."
)
@click.option("--threads", type=click.IntRange(min=1), help="Request threads (OFFLOAD_WEB_THREADS).")
@click.pass_context
def web(click_ctx: click.Context, host: str | None, port: int | None, threads: int | None) -> None:
    """Serve the cron routes and webhooks on waitress."""
    from offload.cli import Ctx
    from store import db as store_db

    ctx = click_ctx.ensure_object(Ctx)
    settings: Settings = ctx.settings
    runtime = ctx.runtime
    store_db.upgrade(runtime.engine)
    run(
        runtime,
        host=host or settings.web_host,
        port=settings.web_port if port is None else port,
        threads=threads or settings.web_threads,
    )
