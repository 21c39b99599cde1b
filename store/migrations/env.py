"""Alembic environment: runs against the engine the caller put in `config.attributes`."""

from alembic import context

from store.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Several processes may start at once; one migrates, the others wait and find nothing to do.
        connection.exec_driver_sql("SELECT pg_advisory_lock(7101970)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
