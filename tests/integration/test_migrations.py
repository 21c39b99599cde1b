"""The migrations match the models and can be undone to 0002 and redone, on both backends."""

from __future__ import annotations

import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from store import db
from store.models import Base
from tests.services import Postgres
from tests.support.domain_data import DOMAIN_TABLES


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diff if d[0] != "remove_table" or d[1].name in Base.metadata.tables] == []
    finally:
        engine.dispose()


def test_0003_downgrades_to_0002_and_upgrades_again(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        command.downgrade(db.alembic_config(engine), "0002")
        assert not set(DOMAIN_TABLES) & set(inspect(engine).get_table_names())
        db.upgrade(engine)
        assert set(DOMAIN_TABLES) <= set(inspect(engine).get_table_names())
        head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
        assert db.current_revision(engine) == head
    finally:
        engine.dispose()


def test_an_upgrade_releases_the_migration_lock_for_the_next_process(postgres: Postgres) -> None:
    # Each process upgrades at start-up (CLI, demo, workers); the lock must not outlive the upgrade
    # in a pooled connection, or the next upgrade through another engine waits forever.
    first, second = db.make_engine(postgres.url), db.make_engine(postgres.url)
    done = threading.Event()
    try:
        db.upgrade(first)
        threading.Thread(target=lambda: (db.upgrade(second), done.set()), daemon=True).start()
        assert done.wait(15), "the second upgrade is still waiting for the migration lock"
    finally:
        first.dispose()
        second.dispose()
