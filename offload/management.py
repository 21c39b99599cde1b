"""A small client of the RabbitMQ management HTTP API: queue depths for the operator's CLI."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

import click
import requests


class ManagementUnavailable(click.ClickException):
    """The management API could not tell: exit 3, as a publish RabbitMQ does not take is."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(f"offload: {self.format_message()}", err=True)  # as every other refusal says it


def queue_depths(management_url: str, broker_url: str) -> dict[str, dict[str, Any]]:
    """Queue name -> the management API's queue object, for the broker URL's vhost."""
    parts = urlsplit(management_url)
    vhost = unquote(urlsplit(broker_url).path.lstrip("/")) or "/"
    host = (parts.hostname or "127.0.0.1") + (f":{parts.port}" if parts.port else "")
    base = parts._replace(netloc=host).geturl()
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    try:
        r = requests.get(f"{base}/api/queues/{quote(vhost, safe='')}", auth=auth, timeout=10)
    except requests.RequestException as e:
        raise ManagementUnavailable(
            f"the RabbitMQ management API at {base} did not answer ({type(e).__name__}); "
            "enable it with `rabbitmq-plugins enable rabbitmq_management`"
        ) from None
    if r.status_code == 401:
        raise ManagementUnavailable(
            f"the RabbitMQ management API at {base} refused the user and password of OFFLOAD_MANAGEMENT_URL"
        )
    if r.status_code == 404:
        raise ManagementUnavailable(f"RabbitMQ has no vhost {vhost!r} (the path of OFFLOAD_BROKER_URL)")
    if not r.ok:
        raise ManagementUnavailable(f"the RabbitMQ management API at {base} answered {r.status_code}")
    try:
        queues = r.json()
    except ValueError:  # not JSON
        queues = None
    if not isinstance(queues, list) or not all(isinstance(q, dict) and "name" in q for q in queues):
        raise ManagementUnavailable(
            f"{base} answered, but not as the RabbitMQ management API; check OFFLOAD_MANAGEMENT_URL"
        )
    return {q["name"]: q for q in queues}
