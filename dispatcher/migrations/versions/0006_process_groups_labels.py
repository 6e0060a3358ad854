"""Process groups and labels: nullable ``processes.group_name`` (indexed) and ``labels``.

Existing processes belong to no group and carry no labels (NULL), so their
records show neither key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("processes") as batch:
        batch.add_column(sa.Column("group_name", sa.Text(), nullable=True))
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=True))
        batch.create_index("ix_processes_group_name", ["group_name"])


def downgrade() -> None:
    with op.batch_alter_table("processes") as batch:
        batch.drop_index("ix_processes_group_name")
        batch.drop_column("labels")
        batch.drop_column("group_name")
