"""Initial schema: definitions, processes, queue, resources, nodes, engines, pd_state.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid alias.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "definitions",
        sa.Column("definition_id", sa.Text(), nullable=False),
        sa.Column("definition_type", sa.Text(), nullable=True),
        sa.Column("executable", sa.JSON(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("legacy_version", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("definition_id", name=op.f("pk_definitions")),
    )
    op.create_table(
        "processes",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("upid", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=True),
        sa.Column("configuration", sa.JSON(), nullable=True),
        sa.Column("constraints", sa.JSON(), nullable=True),
        sa.Column("subscribers", sa.JSON(), nullable=True),
        sa.Column("queueing_mode", sa.Text(), nullable=True),
        sa.Column("restart_mode", sa.Text(), nullable=True),
        sa.Column("node_exclusive", sa.Text(), nullable=True),
        sa.Column("assigned", sa.Text(), nullable=True),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.Column("start_times", sa.JSON(), nullable=True),
        sa.Column("dispatches", sa.Integer(), nullable=False),
        sa.Column("dispatch_times", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processes")),
        sa.UniqueConstraint("upid", name=op.f("uq_processes_upid")),
    )
    op.create_index(op.f("ix_processes_state"), "processes", ["state"], unique=False)
    op.create_table(
        "queue",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("upid", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue")),
    )
    op.create_index(op.f("ix_queue_upid_round"), "queue", ["upid", "round"], unique=False)
    op.create_table(
        "resources",
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("slot_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("assigned", sa.JSON(), nullable=True),
        sa.Column("last_heartbeat", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id", name=op.f("pk_resources")),
    )
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.Text(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("node_exclusive", sa.JSON(), nullable=True),
        sa.Column("state_time", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_nodes")),
    )
    op.create_table(
        "engines",
        sa.Column("engine_id", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("engine_id", name=op.f("pk_engines")),
    )
    op.create_table(
        "pd_state",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_pd_state")),
    )


def downgrade() -> None:
    op.drop_table("pd_state")
    op.drop_table("engines")
    op.drop_table("nodes")
    op.drop_table("resources")
    op.drop_index(op.f("ix_queue_upid_round"), table_name="queue")
    op.drop_table("queue")
    op.drop_index(op.f("ix_processes_state"), table_name="processes")
    op.drop_table("processes")
    op.drop_table("definitions")
