"""The real processes: `offload scheduler` firing through RabbitMQ to a worker, and `offload dev`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from offload.cli import cli
from offload.settings import Settings
from offload.wiring import Runtime
from tests.support.procs import ROOT, Workers, env_for, wait_for


def offload(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "offload", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_invalid_cron_expression_stops_start_up_with_one_line() -> None:
    env = dict(os.environ, OFFLOAD_SCHEDULES=json.dumps({"background-jobs": "61 * * * *"}))
    for command in ("scheduler", "dev", "worker"):
        out = subprocess.run(
            [sys.executable, "-m", "offload", command], cwd=ROOT, env=env, capture_output=True, timeout=60
        )
        lines = out.stderr.decode().strip().splitlines()
        assert out.returncode == 2, out.stderr
        assert lines == [
            "offload: OFFLOAD_SCHEDULES: job 'background-jobs': invalid cron expression '61 * * * *'"
        ]


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_scheduler_process_fires_an_every_minute_job_that_a_worker_runs(
    settings: Settings, runtime: Runtime, workers: Workers, tmp_path: Path
) -> None:
    workers.start(threads=2)
    log = tmp_path / "scheduler.log"
    proc = offload("scheduler", env=env_for(settings), log=log)
    try:

        def scheduled_successes() -> list[object]:
            runs = runtime.ledger.runs(job="background-jobs", status="succeeded", limit=10)
            return [r for r in runs if r.trigger == "schedule"]

        runs = wait_for(
            lambda: len(scheduled_successes()) >= 2 and scheduled_successes(),
            timeout_s=100,
            every_s=1,
            what="two scheduled slots of background-jobs to succeed",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    output = log.read_text()
    assert code == 0, output
    slots = sorted(r.slot for r in runs)  # type: ignore[attr-defined]
    assert slots[1] - slots[0] == timedelta(minutes=1)
    # The slot after start-up comes from periodiq's alarm loop, a few seconds after its minute at most.
    later = next(r for r in runs if r.slot == slots[1])  # type: ignore[attr-defined]
    assert timedelta(0) <= later.queued_at - later.slot < timedelta(seconds=10)  # type: ignore[attr-defined]
    assert "background-jobs" in output and "Traceback" not in output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scheduler_with_every_job_inline_needs_no_broker(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    env = env_for(settings) | {
        "OFFLOAD_INLINE": "true",
        "OFFLOAD_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/%2F",
    }
    log = tmp_path / "scheduler.log"
    proc = offload("scheduler", env=env, log=log)
    try:  # the current minute's slot is within the grace: it fires at start
        [run] = wait_for(
            lambda: runtime.ledger.runs(job="background-jobs", status="succeeded", limit=1),
            timeout_s=60,
            what="the scheduled background-jobs run, inline",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0, log.read_text()
    assert (run.trigger, run.mode) == ("schedule", "inline")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dev_runs_every_process_restarts_a_crashed_one_and_stops_cleanly_on_ctrl_c(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    env = env_for(settings, OFFLOAD_WORKER_PROCESSES="1", OFFLOAD_WORKER_THREADS="2")
    has_web = "web" in cli.commands
    if has_web:
        port_fields = [f for f in Settings.model_fields if f in ("web_port", "port", "http_port")]
        assert port_fields, "offload web exists but no port setting was found for the test to set"
        port = _free_port()
        env[f"OFFLOAD_{port_fields[0].upper()}"] = str(port)
    log = tmp_path / "dev.log"
    dev = offload("dev", env=env, log=log)
    try:

        def started(name: str) -> list[int]:
            return [int(p) for p in re.findall(rf"started {name} \(pid (\d+)\)", log.read_text())]

        wait_for(lambda: started("worker") and started("scheduler"), timeout_s=30, what="children")
        if has_web:
            wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, timeout_s=30, what="/healthz")

        d = runtime.dispatcher.dispatch("background-jobs", trigger="cli")
        wait_for(
            lambda: (r := runtime.ledger.get(d.dispatch_key)) and r.status == "succeeded",
            timeout_s=60,
            what="the dispatched job to run",
        )

        os.kill(started("scheduler")[0], signal.SIGKILL)
        wait_for(lambda: len(started("scheduler")) == 2, timeout_s=30, what="the scheduler to restart")
        assert re.search(r"scheduler exited with code -9; restarting in", log.read_text())

        family = descendants(dev.pid)
        assert len(family) >= 3
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=40)
    output = log.read_text()
    assert code == 0, output
    assert not [pid for pid in family if alive(pid)], output
    assert re.search(r"^worker +\| ", output, re.M) and re.search(r"^scheduler +\| ", output, re.M)
    assert output.rstrip().endswith("stopped")


def _get(url: str) -> int:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return 0
