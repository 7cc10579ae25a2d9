"""What a user message's attachments became is kept beside its text.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

Matches `storage/models.py` (`Message.attached`). A nullable column: existing messages had no
attachments (NULL), and adding it rewrites no table on SQLite or PostgreSQL. Apart from
`content` so that an edit of the message's text replaces `content` and keeps the attachments.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("attached", sa.Text(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN, as in 0003 (batch mode would lose the table's AUTOINCREMENT). What the
    # attachments became is lost with it; the messages' own texts stay.
    op.drop_column("messages", "attached")
