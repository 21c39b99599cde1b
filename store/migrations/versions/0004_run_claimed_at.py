"""runs: claimed_at, the current attempt's claim, read as its `running` history row

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("background_function_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


#: What `SqlLedger.events` reads off a run row as history, each kept unless the history has it.
_ON_ROW = (
    ("running", "r.claimed_at", "r.status IN ('running', 'succeeded') AND r.claimed_at IS NOT NULL"),
    ("succeeded", "r.finished_at", "r.status = 'succeeded' AND r.finished_at IS NOT NULL"),
)


def downgrade() -> None:
    # The code before this revision reads a run's history from its history rows alone: write the
    # claim and the success that only the run row holds, in that order, before the column goes.
    for status, at, where in _ON_ROW:
        op.execute(f"""
            INSERT INTO background_function_run_events (run_id, at, status, attempt, worker_host, worker_pid)
            SELECT r.id, {at}, '{status}', r.attempt, r.worker_host, r.worker_pid
            FROM background_function_runs r
            WHERE {where} AND NOT EXISTS (
                SELECT 1 FROM background_function_run_events e
                WHERE e.run_id = r.id AND e.status = '{status}' AND e.attempt = r.attempt)
            ORDER BY r.id
        """)
    # ALTER TABLE, not a batch: rebuilding the table on SQLite would drop the old one, and with
    # foreign keys on that deletes every history row (ON DELETE CASCADE).
    op.drop_column("background_function_runs", "claimed_at")
