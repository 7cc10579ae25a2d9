"""An assistant message cut short (a timeout, the user's Stop, shutdown) is kept, with the reason.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Matches `storage/models.py` (`Message.cut`). A nullable column: existing rows are whole replies
(NULL), and adding it rewrites no table on SQLite or PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("cut", sa.String(length=16), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN: SQLite has it since 3.35. Not batch mode, whose copy of the table would
    # lose its AUTOINCREMENT (not reflected), and with it the rule that ids are never reused.
    op.drop_column("messages", "cut")
