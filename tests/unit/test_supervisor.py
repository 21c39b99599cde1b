"""`offload dev`'s Supervisor stops its children on every signal that stops it: none outlives it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT, wait_for

SUPERVISOR = """
import sys
from offload.processes import Supervisor
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
sys.exit(Supervisor([("sleeper", sleeper)], stop_timeout_s=5).run())
"""


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_that_stops_the_supervisor_stops_its_children(signum: signal.Signals) -> None:
    """SIGHUP: the terminal of `./dev run` was closed; it reaches only the supervisor."""
    sup = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = None
    try:
        assert sup.stdout is not None
        started = re.search(r"started sleeper \(pid (\d+)\)", sup.stdout.readline())
        assert started is not None
        child = int(started.group(1))
        sup.send_signal(signum)
        assert sup.wait(timeout=20) == 0
        wait_for(lambda: not running(child), timeout_s=5, what=f"child {child} to stop")
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
