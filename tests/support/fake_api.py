"""A local HTTP server standing in for the calendar provider and the sending platform.

It records every request, answers from a per-route script of (status, body, delay_s) when one is
queued, and otherwise behaves like a healthy provider: `POST /emails` sends at most one email per
Idempotency-Key (a repeat gets the first message id back).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


class FakeApi:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.sent: dict[str, str] = {}
        self.busy: list[dict[str, str]] = []
        self._script: dict[tuple[str, str], list[tuple[int, Any, float]]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def plan(self, method: str, path: str, *answers: tuple[int, Any, float]) -> None:
        """Queue answers for the next requests to `method path`; afterwards the default behaviour resumes."""
        with self._lock:
            self._script.setdefault((method, path), []).extend(answers)

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if (s.method, s.path) == (method, path))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, seen: Seen) -> tuple[int, Any, float]:
        with self._lock:
            self.seen.append(seen)
            queued = self._script.get((seen.method, seen.path))
            if queued:
                return queued.pop(0)
            if (seen.method, seen.path) == ("POST", "/emails"):
                key = seen.headers.get("idempotency-key", "")
                message_id = self.sent.setdefault(key, f"<msg-{len(self.sent) + 1}@fake>")
                return 200, {"message_id": message_id}, 0.0
            if seen.method == "GET" and seen.path.endswith("/busy"):
                return 200, {"busy": self.busy}, 0.0
            if seen.method == "GET" and seen.path.endswith("/bookings"):
                return 200, {"bookings": []}, 0.0
            return 204, None, 0.0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = Seen(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=json.loads(raw) if raw else None,
                )
                status, body, delay_s = api._answer(seen)
                time.sleep(delay_s)
                payload = (
                    b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
                )
                with contextlib.suppress(OSError):  # the client may have given up (timeout)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
