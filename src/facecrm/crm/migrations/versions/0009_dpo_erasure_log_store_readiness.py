"""erasure log (keyed hashes of erased customers' ids) and store readiness confirmations

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_log",
        sa.Column("ref", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ref"),
    )
    op.create_index("ix_erasure_log_erased_at", "erasure_log", ["erased_at"])
    op.create_table(
        "store_readiness",
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("item", sa.String(length=20), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("confirmed_by", sa.String(length=100), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("store_id", "item"),
    )


def downgrade() -> None:
    op.drop_table("store_readiness")
    op.drop_index("ix_erasure_log_erased_at", table_name="erasure_log")
    op.drop_table("erasure_log")
