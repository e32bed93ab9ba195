"""camera health: each agent camera's last frame time, and camera_silent alerts

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 00:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "camera_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("last_frame_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("camera_alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_camera_alerts_raised_at"), ["raised_at"])
        batch_op.create_index(batch_op.f("ix_camera_alerts_store_id"), ["store_id"])
    op.create_table(
        "camera_health",
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("first_reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_frame_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("silent_alert_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["silent_alert_id"], ["camera_alerts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "camera"),
    )
    with op.batch_alter_table("camera_health", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_camera_health_store_id"), ["store_id"])


def downgrade() -> None:
    op.drop_table("camera_health")
    op.drop_table("camera_alerts")
