"""A RabbitMQ memory alarm, raised and cleared by a test: RabbitMQ blocks every publishing connection."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _ctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


@contextmanager
def memory_alarm() -> Iterator[None]:
    """A watermark of 0 sets the alarm off at once; the watermark the server had is put back after."""
    if not shutil.which("rabbitmqctl"):
        why = "raising a RabbitMQ alarm needs rabbitmqctl on the server's host"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI runs there", pytrace=False)
        pytest.skip(why)
    was = _ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip().splitlines()[-1]
    restore = ["absolute", was.strip("{}").split(",")[1]] if was.startswith("{absolute") else [was]
    _ctl("set_vm_memory_high_watermark", "0")
    try:
        yield
    finally:
        _ctl("set_vm_memory_high_watermark", *restore)
