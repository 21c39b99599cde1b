"""`offload dev`'s Supervisor stops its children on every signal that stops it: none outlives it."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
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


def test_a_child_refusing_its_first_start_stops_them_all_with_exit_2() -> None:
    """A port in use or a bad setting: a restart would only be refused again, in a loop."""
    code = """
import sys
from offload.processes import Supervisor
refuses = [sys.executable, "-c", "import sys; sys.exit(2)"]
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
sys.exit(Supervisor([("web", refuses), ("sleeper", sleeper)], stop_timeout_s=5).run())
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout
    assert "web refused to start (exit 2); stopping" in done.stdout
    assert "restarting" not in done.stdout


@pytest.mark.parametrize(
    ("starts", "ran_s"), [(2, 0.0), (1, 120.0)], ids=["a restart", "a first start that ran a while"]
)
def test_a_child_exiting_2_after_it_ran_is_restarted(starts: int, ran_s: float) -> None:
    """The broker gone when a crashed worker restarts: that one comes back when the broker does."""
    from offload.processes import Supervisor

    sup = Supervisor([("worker", [sys.executable, "-c", "import sys; sys.exit(2)"])], out=io.StringIO())
    [child] = sup.children
    child.proc = subprocess.Popen(child.argv)
    child.proc.wait()
    child.starts, child.started_at = starts, time.monotonic() - ran_s
    sup._check()
    assert child.restart_at is not None and not sup.stopping
