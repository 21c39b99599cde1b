"""Helpers for tests that run real processes and wait on real outcomes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from offload.settings import Settings
from offload.wiring import Runtime
from tests.support.jobs import EFFECTS_DDL

ROOT = Path(__file__).resolve().parent.parent.parent


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`offload ARGS` in a process of its own, configured by `env`'s OFFLOAD_* variables only."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")} | env
    return subprocess.run(
        [sys.executable, "-m", "offload.cli", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OFFLOAD_DATABASE_URL=settings.database_url,
        OFFLOAD_BROKER_URL=settings.broker_url,
        OFFLOAD_MANAGEMENT_URL=settings.management_url,
        OFFLOAD_LEASE_GRACE_S=str(settings.lease_grace_s),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


class Workers:
    """Worker groups started as real processes (`python -m dramatiq tests.support.app:broker`)."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *, processes: int = 1, threads: int = 4, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "tests.support.app:broker",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
            ],
            cwd=ROOT,
            env=env_for(self.settings, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp_path.glob("worker-*.log"))
        )


def effects(runtime: Runtime, key: str) -> int:
    """How many times a test job's effect was committed for `key`."""
    with runtime.engine.connect() as conn:
        q = text("SELECT count(*) FROM test_effects WHERE dispatch_key = :k")
        return int(conn.execute(q, {"k": key}).scalar_one())


def clear_of_minute_boundary(margin_s: float = 15.0) -> None:
    """Sleep into the next minute if fewer than `margin_s` seconds are left in this one.

    For tests whose triggers must all fall into one every-minute slot.
    """
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.5)


def wait_for(
    predicate: Callable[[], Any], *, timeout_s: float = 30.0, every_s: float = 0.1, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or predicate}", pytrace=False)
        time.sleep(every_s)


def reset_postgres(url: str) -> None:
    """Empty every table of a migrated PostgreSQL database."""
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        conn.execute(text(EFFECTS_DDL))
        conn.execute(text(f"TRUNCATE {', '.join([*tables, 'test_effects'])} RESTART IDENTITY CASCADE"))
    engine.dispose()
