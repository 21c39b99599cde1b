"""Migration 0003 matches the models, and can be undone and redone, on both backends."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from store import db
from store.models import Base
from tests.support.domain_data import DOMAIN_TABLES


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        ours = [d for d in diff if any(t in repr(d) for t in DOMAIN_TABLES)]
        assert ours == []
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
