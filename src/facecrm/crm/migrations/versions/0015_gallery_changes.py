"""gallery change log for incremental agent sync (ids only, no biometric data)

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-02 00:15:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gallery_changes",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("template_id", sa.BigInteger(), nullable=True),
        sa.Column("store_id", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_gallery_changes_customer_id", "gallery_changes", ["customer_id"])
    op.create_index("ix_gallery_changes_at", "gallery_changes", ["at"])
    op.create_table(
        "sync_marks",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("sync_marks")
    op.drop_index("ix_gallery_changes_at", table_name="gallery_changes")
    op.drop_index("ix_gallery_changes_customer_id", table_name="gallery_changes")
    op.drop_table("gallery_changes")
