"""store analytics: zones per camera and the demographics/sentiment switches (issue 13)

Revision ID: 0017
Revises: 0013
Create Date: 2026-12-02 00:17:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_analytics",
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("zones", sa.JSON(), nullable=False),
        sa.Column("demographics_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sentiment_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("store_id"),
    )


def downgrade() -> None:
    op.drop_table("store_analytics")
