"""face checkout: the smile challenge, step-up lock, signed authorisation, paid-by-face purchases

`payment_profiles` counts failed step-ups across sessions and holds the lock they cause
(`locked_until`); `pay_sessions` keeps what the state machine needs between calls (the
random smile moment, bursts without a face, step-up attempts, the match margin, the signed
authorisation, the POS confirmation); `purchases.paid_by` marks a purchase paid by face.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-10 00:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_profiles") as batch:
        batch.add_column(
            sa.Column("failed_step_ups", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("pay_sessions") as batch:
        batch.add_column(sa.Column("smile_after_ms", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("no_face_bursts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("step_up_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("match_margin_z", sa.Float(), nullable=True))
        batch.add_column(sa.Column("authorisation", sa.Text(), nullable=True))
        batch.add_column(sa.Column("authorised_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("provider_reference", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("purchase_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            "fk_pay_sessions_purchase_id", "purchases", ["purchase_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index("ix_pay_sessions_customer_id", "pay_sessions", ["customer_id"])
    with op.batch_alter_table("purchases") as batch:
        batch.add_column(sa.Column("paid_by", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("purchases") as batch:
        batch.drop_column("paid_by")
    op.drop_index("ix_pay_sessions_customer_id", table_name="pay_sessions")
    with op.batch_alter_table("pay_sessions") as batch:
        batch.drop_constraint("fk_pay_sessions_purchase_id", type_="foreignkey")
        for name in (
            "confirmed_at",
            "purchase_id",
            "provider_reference",
            "authorised_at",
            "authorisation",
            "match_margin_z",
            "step_up_attempts",
            "no_face_bursts",
            "smile_after_ms",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("payment_profiles") as batch:
        batch.drop_column("locked_until")
        batch.drop_column("failed_step_ups")
