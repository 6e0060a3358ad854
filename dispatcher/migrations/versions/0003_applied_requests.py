"""Applied requests: the ``applied_requests`` table (ids of state-changing requests).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "applied_requests",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("applied_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_applied_requests")),
    )
    op.create_index(
        op.f("ix_applied_requests_applied_at"), "applied_requests", ["applied_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_applied_requests_applied_at"), table_name="applied_requests")
    op.drop_table("applied_requests")
