"""A definition's default maximum runtime: a nullable ``definitions.max_runtime_seconds``.

Existing definitions keep no default (NULL), so their processes run as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("definitions") as batch:
        batch.add_column(sa.Column("max_runtime_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("definitions") as batch:
        batch.drop_column("max_runtime_seconds")
