"""footfall aggregates: anonymous hourly counters per store, zone, metric and bucket (issue 13)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 00:18:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "footfall_aggregates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("zone", sa.String(length=20), nullable=False),
        sa.Column("metric", sa.String(length=20), nullable=False),
        sa.Column("bucket", sa.String(length=20), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("store_id", "hour", "zone", "metric", "bucket", name="uq_footfall_key"),
    )
    op.create_index("ix_footfall_aggregates_hour", "footfall_aggregates", ["hour"])


def downgrade() -> None:
    op.drop_index("ix_footfall_aggregates_hour", table_name="footfall_aggregates")
    op.drop_table("footfall_aggregates")
