"""Shared fixtures: real RabbitMQ and PostgreSQL (a vhost and a database of their own), and SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from offload.settings import Settings
from offload.wiring import Runtime, build
from store import db
from tests.services import Postgres, Rabbit
from tests.support.jobs import EFFECTS_DDL, TEST_PORTS, TEST_REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def _unavailable(what: str, e: BaseException) -> None:
    """A missing server fails the run, never skips it: .ci/run starts both."""
    pytest.fail(f"{what} is not reachable ({type(e).__name__}: {e}); .ci/run starts it", pytrace=False)


@pytest.fixture(scope="session")
def rabbit() -> Iterator[Rabbit]:
    r = Rabbit()
    try:
        r.create()
    except Exception as e:
        _unavailable("RabbitMQ's management API", e)
    yield r
    r.delete()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.create()
    except Exception as e:
        _unavailable("PostgreSQL", e)
    engine = db.make_engine(pg.url)
    db.upgrade(engine)
    engine.dispose()
    yield pg
    pg.drop()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        conn.execute(text(EFFECTS_DDL))
        conn.execute(text(f"TRUNCATE {', '.join([*tables, 'test_effects'])} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'offload.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(EFFECTS_DDL))
        engine.dispose()
        return url
    pg: Postgres = request.getfixturevalue("postgres")
    _reset_postgres(pg.url)
    return pg.url


@pytest.fixture
def settings(database_url: str, rabbit: Rabbit) -> Settings:
    rabbit.delete_queues()
    return Settings(
        database_url=database_url,
        broker_url=rabbit.url,
        management_url=rabbit.management_url,
        lease_grace_s=2.0,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build(settings, registry=TEST_REGISTRY, ports=TEST_PORTS)
    yield rt
    rt.close()


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


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path)
    yield w
    w.stop()


def effects(runtime: Runtime, key: str) -> int:
    """How many times a test job's effect was committed for `key`."""
    with runtime.engine.connect() as conn:
        q = text("SELECT count(*) FROM test_effects WHERE dispatch_key = :k")
        return int(conn.execute(q, {"k": key}).scalar_one())


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
