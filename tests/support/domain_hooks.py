"""Test-only hooks for worker processes, switched on by environment variables.

OFFLOAD_TEST_NOW=<ISO time>: jobs see this fixed `now` (parity runs compare two databases).
OFFLOAD_TEST_KILL_AFTER_SEND=<path>: while the file exists, the first follow-up email sent deletes it and
SIGKILLs its own worker process right after the provider took the email and before the job commits.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from domain.ports import EmailSender, OutgoingEmail


class KillAfterSend:
    def __init__(self, inner: EmailSender, marker: Path) -> None:
        self.inner = inner
        self.marker = marker

    def send(self, email: OutgoingEmail) -> str:
        message_id = self.inner.send(email)
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return message_id
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def install(runtime: Any) -> None:
    now = os.environ.get("OFFLOAD_TEST_NOW")
    if now:
        fixed = datetime.fromisoformat(now)
        runtime.runner.clock = lambda: fixed
    marker = os.environ.get("OFFLOAD_TEST_KILL_AFTER_SEND")
    if marker:
        ports = runtime.runner.ports
        runtime.runner.ports = dataclasses.replace(ports, email=KillAfterSend(ports.email, Path(marker)))
