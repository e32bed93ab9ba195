"""consent texts the chain owns; consent evidence; enrollment settings

Consent texts become rows (`consent_texts`: purpose, version, language, body; never
changed once written, since consents point at them), shipped with today's text in
English and French. Every consent points at the exact row shown (`text_id`, backfilled
from `text_version`), records the principal that took it (`witness_id`) and, once
withdrawn, who withdrew it, in which store and through which channel. `enrollment_settings`
holds the chain's and each store's enrollment options (language, phone and tier fields,
minimum age, kiosk idle reset).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 09:00:00
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

VERSION = "2026-11-v1"
PURPOSE = "in_store_recognition"
SHIPPED_AT = datetime(2026, 11, 1, tzinfo=UTC)
SHIPPED_BY = "facecrm (shipped text)"
# frozen copies: the texts as shipped on 2026-11-01 (later edits are new rows, made in the console)
TEXTS = {
    "en": (
        "I agree that this chain's stores may recognise my face so that staff can greet me "
        "and serve me better. My photos are turned into face templates that are used only "
        "for this purpose, in the chain's stores. People who have not agreed are never "
        "stored. I can withdraw this consent at any time, at a kiosk, with an associate or "
        "online; my templates are then deleted at once. I can ask for a copy of everything "
        "held about me, or for all of it to be erased."
    ),
    "fr": (
        "J'accepte que les magasins de cette enseigne reconnaissent mon visage, afin que le "
        "personnel puisse m'accueillir et mieux me servir. Mes photos sont transformées en "
        "gabarits faciaux, utilisés uniquement à cette fin et dans les magasins de "
        "l'enseigne. Les personnes qui n'ont pas donné leur accord ne sont jamais "
        "enregistrées. Je peux retirer ce consentement à tout moment, sur une borne, auprès "
        "d'un conseiller ou en ligne\u00a0; mes gabarits sont alors supprimés immédiatement. "
        "Je peux demander une copie de toutes les données me concernant, ou leur effacement "
        "complet."
    ),
}
UNRECORDED = "(not recorded: this consent was given before facecrm kept its texts)"

consent_texts = sa.table(
    "consent_texts",
    sa.column("id", sa.Integer),
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
        "consent_texts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("purpose", "version", "language", name="uq_consent_texts_version"),
    )
    op.create_index("ix_consent_texts_purpose", "consent_texts", ["purpose"])
    op.bulk_insert(
        consent_texts,
        [
            {
                "purpose": PURPOSE,
                "version": VERSION,
                "language": language,
                "body": body,
                "created_by": SHIPPED_BY,
                "created_at": SHIPPED_AT,
                "active": True,
            }
            for language, body in TEXTS.items()
        ],
    )
    bind = op.get_bind()
    # versions no text was kept for (before the server checked them): an inactive placeholder
    unknown = bind.execute(
        sa.text("SELECT DISTINCT text_version FROM consents WHERE text_version <> :v"),
        {"v": VERSION},
    ).scalars()
    op.bulk_insert(
        consent_texts,
        [
            {
                "purpose": PURPOSE,
                "version": version,
                "language": "und",
                "body": UNRECORDED,
                "created_by": SHIPPED_BY,
                "created_at": SHIPPED_AT,
                "active": False,
            }
            for version in unknown
        ],
    )
    with op.batch_alter_table("consents") as batch_op:
        batch_op.add_column(sa.Column("text_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("witness_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_store_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_channel", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("age_confirmed", sa.Integer(), nullable=True))
    # every older consent was given on the English text of its version (the only one shown)
    bind.execute(
        sa.text(
            "UPDATE consents SET text_id = (SELECT t.id FROM consent_texts t "
            "WHERE t.version = consents.text_version AND t.language IN ('en', 'und'))"
        )
    )
    with op.batch_alter_table("consents") as batch_op:
        batch_op.alter_column("text_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            "fk_consents_text", "consent_texts", ["text_id"], ["id"], ondelete="RESTRICT"
        )
        batch_op.create_foreign_key(
            "fk_consents_withdrawn_store",
            "stores",
            ["withdrawn_store_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "enrollment_settings",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("ask_phone", sa.Boolean(), nullable=True),
        sa.Column("ask_tier", sa.Boolean(), nullable=True),
        sa.Column("min_age", sa.Integer(), nullable=True),
        sa.Column("kiosk_idle_seconds", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )


def downgrade() -> None:
    op.drop_table("enrollment_settings")
    with op.batch_alter_table("consents") as batch_op:
        batch_op.drop_constraint("fk_consents_withdrawn_store", type_="foreignkey")
        batch_op.drop_constraint("fk_consents_text", type_="foreignkey")
        batch_op.drop_column("age_confirmed")
        batch_op.drop_column("withdrawn_channel")
        batch_op.drop_column("withdrawn_store_id")
        batch_op.drop_column("withdrawn_by")
        batch_op.drop_column("witness_id")
        batch_op.drop_column("text_id")
    op.drop_index("ix_consent_texts_purpose", table_name="consent_texts")
    op.drop_table("consent_texts")
