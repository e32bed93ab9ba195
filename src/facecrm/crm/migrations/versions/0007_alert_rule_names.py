"""alerts.rule holds every fired rule's name

Five rules fit in 82 characters joined by commas; the column held 40, so an alert
fired by three rules failed its insert on PostgreSQL (and with it the visit).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 00:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.alter_column(
            "rule", existing_type=sa.String(length=40), type_=sa.String(length=200)
        )


def downgrade() -> None:
    # names beyond 40 characters are cut at a comma boundary so the old width holds them
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, rule FROM alerts WHERE length(rule) > 40")).all()
    for row_id, rule in rows:
        kept: list[str] = []
        for name in rule.split(","):
            if len(",".join([*kept, name])) <= 40:
                kept.append(name)
        bind.execute(
            sa.text("UPDATE alerts SET rule = :rule WHERE id = :id"),
            {"rule": ",".join(kept), "id": row_id},
        )
    with op.batch_alter_table("alerts") as batch_op:
        batch_op.alter_column(
            "rule", existing_type=sa.String(length=200), type_=sa.String(length=40)
        )
