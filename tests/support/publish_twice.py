"""`python -m tests.support.publish_twice URL`: a confirmed publish on one connection, twice.

Connects with offload's connection defaults (`with_connection_defaults`), publishes one persistent
message with a confirm, prints `ready`, waits for a line on stdin, publishes again on the same
connection and prints one JSON line with the error that raised (or null) and how long it took.
"""

from __future__ import annotations

import json
import sys
import time

import pika

from actors.amqp_url import with_connection_defaults


def main(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(with_connection_defaults(url)))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("offload-test.silent", durable=True)
    persistent = pika.BasicProperties(delivery_mode=2)
    channel.basic_publish("", "offload-test.silent", b"first", persistent)
    print("ready", flush=True)
    sys.stdin.readline()
    started, error = time.monotonic(), None
    try:
        channel.basic_publish("", "offload-test.silent", b"second", persistent)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    print(json.dumps({"error": error, "s": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
