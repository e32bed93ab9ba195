"""face payment: payment profiles, POS payment sessions, the face_payment consent text (issue 14)

`payment_profiles` holds what a customer set up for face payment (an opaque wallet token,
an HMAC of the phone's last 4 digits, limits); `pay_sessions` a till's payment attempts.
The English `face_payment` consent text ships with it, so a consent can be taken at once
(the chain adds its translations and later versions in the console).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 00:19:00
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

VERSION = "2026-12-v1"
PURPOSE = "face_payment"
SHIPPED_AT = datetime(2026, 12, 4, tzinfo=UTC)
SHIPPED_BY = "facecrm (shipped text)"
# a frozen copy: the text as shipped (later edits are new rows, made in the console)
TEXT_EN = (
    "I agree that I may pay at this chain's tills by looking at the camera and smiling. "
    "This needs my consent to in-store recognition as well. The chain keeps a payment "
    "reference from my wallet provider (never my card number), the last 4 digits of my "
    "phone number in a form that cannot be read back, and the limits I chose. When the "
    "match is not certain I am asked for those digits, and I can always pay another way. "
    "I can withdraw this consent at any time: face payment stops at once and my payment "
    "set-up is deleted, while recognition stays as I agreed."
)

consent_texts = sa.table(
    "consent_texts",
    sa.column("purpose", sa.String),
    sa.column("version", sa.String),
    sa.column("language", sa.String),
    sa.column("body", sa.Text),
    sa.column("created_by", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("active", sa.Boolean),
)


def upgrade() -> None:
    op.create_table(
        "payment_profiles",
        sa.Column("customer_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("phone_last4_mac", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("limit_per_transaction", sa.BigInteger(), nullable=False),
        sa.Column("limit_per_day", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "pay_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("store_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("till", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("decline_reason", sa.String(length=40), nullable=True),
        sa.Column("customer_id", sa.String(length=32), nullable=True),
        sa.Column("idempotency_key", sa.String(length=100), nullable=True),
        sa.Column("request_mac", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["store_id"], ["stores.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "idempotency_key", name="uq_pay_sessions_idempotency"),
    )
    op.create_index("ix_pay_sessions_store_id", "pay_sessions", ["store_id"])
    op.create_index("ix_pay_sessions_expires_at", "pay_sessions", ["expires_at"])
    op.bulk_insert(
        consent_texts,
        [
            {
                "purpose": PURPOSE,
                "version": VERSION,
                "language": "en",
                "body": TEXT_EN,
                "created_by": SHIPPED_BY,
                "created_at": SHIPPED_AT,
                "active": True,
            }
        ],
    )


def downgrade() -> None:
    # the shipped text goes unless a consent points at it (consents are evidence: kept)
    op.execute(
        sa.text(
            "DELETE FROM consent_texts WHERE purpose = :purpose AND version = :version"
            " AND id NOT IN (SELECT text_id FROM consents WHERE text_id IS NOT NULL)"
        ).bindparams(purpose=PURPOSE, version=VERSION)
    )
    op.drop_index("ix_pay_sessions_expires_at", table_name="pay_sessions")
    op.drop_index("ix_pay_sessions_store_id", table_name="pay_sessions")
    op.drop_table("pay_sessions")
    op.drop_table("payment_profiles")
