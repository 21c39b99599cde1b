"""The real servers the tests use: a throwaway RabbitMQ vhost and PostgreSQL database per test session."""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import psycopg
import requests

AMQP_HOSTPORT = os.environ.get("OFFLOAD_TEST_AMQP", "127.0.0.1:5672")
MANAGEMENT_URL = os.environ.get("OFFLOAD_TEST_MANAGEMENT", "http://127.0.0.1:15672")
MANAGEMENT_AUTH = ("guest", "guest")
PG_ADMIN_DSN = os.environ.get("OFFLOAD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class Rabbit:
    """A vhost of its own on the local RabbitMQ, managed through the management HTTP API."""

    def __init__(self) -> None:
        self.vhost = f"offload-test-{uuid.uuid4().hex[:8]}"
        self.api = MANAGEMENT_URL

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{AMQP_HOSTPORT}/{quote(self.vhost, safe='')}"

    @property
    def management_url(self) -> str:
        return MANAGEMENT_URL.replace("://", "://guest:guest@", 1)

    def _vhost_path(self) -> str:
        return quote(self.vhost, safe="")

    def create(self) -> None:
        r = requests.put(f"{self.api}/api/vhosts/{self._vhost_path()}", auth=MANAGEMENT_AUTH, timeout=10)
        r.raise_for_status()
        r = requests.put(
            f"{self.api}/api/permissions/{self._vhost_path()}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=MANAGEMENT_AUTH,
            timeout=10,
        )
        r.raise_for_status()

    def delete(self) -> None:
        requests.delete(f"{self.api}/api/vhosts/{self._vhost_path()}", auth=MANAGEMENT_AUTH, timeout=10)

    def queues(self) -> dict[str, dict[str, object]]:
        r = requests.get(f"{self.api}/api/queues/{self._vhost_path()}", auth=MANAGEMENT_AUTH, timeout=10)
        r.raise_for_status()
        return {q["name"]: q for q in r.json()}

    def delete_queues(self) -> None:
        for name in self.queues():
            requests.delete(
                f"{self.api}/api/queues/{self._vhost_path()}/{quote(name, safe='')}",
                auth=MANAGEMENT_AUTH,
                timeout=10,
            )

    def message_count(self, queue: str) -> int:
        """Messages in `queue` (ready + unacked), asked of RabbitMQ directly rather than the stats cache."""
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            return int(ch.queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()


class Postgres:
    """A database of its own on the local PostgreSQL server."""

    def __init__(self) -> None:
        self.name = f"offload_test_{uuid.uuid4().hex[:8]}"

    @property
    def url(self) -> str:
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        return f"{base}/{self.name}"

    def create(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
