"""alerts staff can act on: disputed visits, alert kinds and history, store time zone,
the dispute report

* visits.camera (the agent's camera label) and visits.disputed ("not this person": out of
  the customer's history and of the rules);
* alerts.kind (arrival, camera_silent, ...), alerts.customer_id nullable (an alert about a
  camera names no customer), alerts.reasons (plain words), and how an alert was closed
  (closed_at, closed_by, outcome: greeted, dismissed, disputed); greeted alerts of before
  are closed as greeted;
* store_configs.time_zone (IANA name, default UTC): alerts show the store's local time;
* match_disputes: the per-store report of disputed matches (template-free facts).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("visits", sa.Column("camera", sa.String(length=100), nullable=True))
    op.add_column(
        "visits", sa.Column("disputed", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "store_configs",
        sa.Column("time_zone", sa.String(length=64), nullable=False, server_default="UTC"),
    )
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.alter_column("customer_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.add_column(
            sa.Column("kind", sa.String(length=40), nullable=False, server_default="arrival")
        )
        batch_op.add_column(sa.Column("reasons", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("closed_by", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("outcome", sa.String(length=20), nullable=True))
        batch_op.create_foreign_key(
            "fk_alerts_closed_by_staff_users",
            "staff_users",
            ["closed_by"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_alerts_closed_at", ["closed_at"])
    op.execute(
        "UPDATE alerts SET closed_at = acknowledged_at, closed_by = claimed_by, "
        "outcome = 'greeted' WHERE acknowledged_at IS NOT NULL"
    )
    op.create_table(
        "match_disputes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("camera", sa.String(length=100), nullable=True),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disputed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("disputed_by", sa.String(length=32), nullable=True),
        sa.Column("visit_id", sa.Integer(), nullable=True),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("ref", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["disputed_by"], ["staff_users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["visit_id"], ["visits.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref"),
    )
    op.create_index("ix_match_disputes_store_id", "match_disputes", ["store_id"])
    op.create_index("ix_match_disputes_customer_id", "match_disputes", ["customer_id"])
    op.create_index("ix_match_disputes_disputed_at", "match_disputes", ["disputed_at"])


def downgrade() -> None:
    op.drop_index("ix_match_disputes_disputed_at", table_name="match_disputes")
    op.drop_index("ix_match_disputes_customer_id", table_name="match_disputes")
    op.drop_index("ix_match_disputes_store_id", table_name="match_disputes")
    op.drop_table("match_disputes")
    op.execute("DELETE FROM alerts WHERE customer_id IS NULL")  # the old schema needs one
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.drop_index("ix_alerts_closed_at")
        batch_op.drop_constraint("fk_alerts_closed_by_staff_users", type_="foreignkey")
        batch_op.drop_column("outcome")
        batch_op.drop_column("closed_by")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("reasons")
        batch_op.drop_column("kind")
        batch_op.alter_column("customer_id", existing_type=sa.String(length=32), nullable=False)
    op.drop_column("store_configs", "time_zone")
    op.drop_column("visits", "disputed")
    op.drop_column("visits", "camera")
