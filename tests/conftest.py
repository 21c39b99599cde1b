"""Shared fixtures: real RabbitMQ and PostgreSQL (a vhost and a database of their own), and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from offload.settings import Settings
from offload.wiring import Runtime, build
from store import db
from tests.services import Postgres, Rabbit
from tests.support.jobs import EFFECTS_DDL, TEST_PORTS, TEST_REGISTRY
from tests.support.procs import Workers, reset_postgres


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
    reset_postgres(pg.url)
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


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path)
    yield w
    w.stop()
