"""The AMQP URL of offload's connections: the configured one, with timeouts unless it names its own.

Apart from the broker, so that settings can check a URL as the connections will read it without
loading dramatiq.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HEARTBEAT_S = 30
TCP_USER_TIMEOUT_MS = 30_000
#: How long a publish waits while RabbitMQ blocks publishers (a memory or disk alarm) before it gives
#: the connection up; dramatiq's enqueue tries six connections, so a publish fails after about 30 s.
BLOCKED_TIMEOUT_S = 5


def with_connection_defaults(url: str, *, blocked_timeout_s: float | None = None) -> str:
    """`url` with an AMQP heartbeat (pika's default is the server's, 60 s) and a TCP user timeout,
    each unless it names one: a broker that goes silent (a cable pulled) fails a publish waiting on
    it after 30 s, where the heartbeat alone takes 60 to 90. With `blocked_timeout_s`, a connection
    RabbitMQ blocks (a resource alarm) is given up after that long, unless the URL says otherwise."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if blocked_timeout_s is not None:
        query.setdefault("blocked_connection_timeout", str(blocked_timeout_s))
    query.setdefault("heartbeat", str(HEARTBEAT_S))
    query.setdefault("tcp_options", f"{{'TCP_USER_TIMEOUT': {TCP_USER_TIMEOUT_MS}}}")
    query.setdefault("connection_attempts", "2")
    query.setdefault("retry_delay", "1")
    return urlunsplit(parts._replace(query=urlencode(query)))
