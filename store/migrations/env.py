"""Alembic environment: runs against the engine the caller put in `config.attributes`."""

from alembic import context

from store.models import Base

_LOCK = 7101970

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    locked = connection.dialect.name == "postgresql"
    if locked:
        # Several processes may start at once; one migrates, the others wait and find nothing to do.
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK})")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if locked:
            # A session-level lock outlives the transaction: release it before the connection goes
            # back to the pool, or the next upgrade through another connection waits forever.
            connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK})")
            connection.commit()
