"""Process outcomes: exit code, reason, times, restart policy columns and the event history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = (
    ("exit_code", sa.Integer()),
    ("signal", sa.Integer()),
    ("reason", sa.Text()),
    ("started_at", sa.Float()),
    ("ended_at", sa.Float()),
    ("next_restart_at", sa.Float()),
    ("max_runtime_seconds", sa.Float()),
    ("restart_policy", sa.JSON()),
    ("failure_times", sa.JSON()),
)


def upgrade() -> None:
    with op.batch_alter_table("processes") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "process_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("upid", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("agent", sa.Text(), nullable=True),
        sa.Column("node", sa.Text(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("signal", sa.Integer(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_process_events")),
    )
    op.create_index(
        op.f("ix_process_events_upid_id"), "process_events", ["upid", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_process_events_upid_id"), table_name="process_events")
    op.drop_table("process_events")
    with op.batch_alter_table("processes") as batch:
        batch.drop_column("restarts")
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
