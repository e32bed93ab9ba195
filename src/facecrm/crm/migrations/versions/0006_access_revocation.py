"""access revocation: token versions, logged-out sessions, case-insensitive usernames,
idempotency keys per device

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_AGENT_EVENT_COLUMNS = "device_id, key, received_at, outcome"


def _agent_events_table(name: str, primary_key: list[str]) -> None:
    op.create_table(
        name,
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(*primary_key),
    )


def _rekey_agent_events(primary_key: list[str]) -> None:
    """Change the primary key of agent_events (SQLite: copy into a new table)."""
    if op.get_bind().dialect.name == "sqlite":
        _agent_events_table("agent_events_new", primary_key)
        op.execute(
            f"INSERT INTO agent_events_new ({_AGENT_EVENT_COLUMNS}) "
            f"SELECT {_AGENT_EVENT_COLUMNS} FROM agent_events"
        )
        op.drop_table("agent_events")
        op.rename_table("agent_events_new", "agent_events")
    else:
        op.drop_constraint("agent_events_pkey", "agent_events", type_="primary")
        op.create_primary_key("agent_events_pkey", "agent_events", primary_key)


def upgrade() -> None:
    op.add_column(
        "staff_users", sa.Column("token_version", sa.Integer(), server_default="0", nullable=False)
    )
    # fails if two existing accounts differ only in case: rename one first
    op.create_index(
        "uq_staff_users_username_lower",
        "staff_users",
        [sa.text("lower(username)")],
        unique=True,
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])
    _rekey_agent_events(["device_id", "key"])


def downgrade() -> None:
    # a key used by several devices can be kept only once under the old primary key
    op.execute(
        "DELETE FROM agent_events WHERE EXISTS (SELECT 1 FROM agent_events AS other "
        "WHERE other.key = agent_events.key AND other.device_id < agent_events.device_id)"
    )
    _rekey_agent_events(["key"])
    op.drop_index("ix_revoked_tokens_expires_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
    op.drop_index("uq_staff_users_username_lower", table_name="staff_users")
    # a plain DROP COLUMN (SQLite >= 3.35): a batch copy of staff_users would cascade deletes
    op.drop_column("staff_users", "token_version")
