"""The system of record: SQLAlchemy 2 models (schema changes go through Alembic)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[object, object]] = {datetime: DateTime(timezone=True)}


class Purpose(StrEnum):
    """What a customer consented to; each purpose is given and withdrawn separately."""

    IN_STORE_RECOGNITION = "in_store_recognition"
    FACE_PAYMENT = "face_payment"
    EXPERIENCE_ANALYTICS = "experience_analytics"
    MARKETING = "marketing"


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    consents: Mapped[list[Consent]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="Consent.given_at"
    )
    templates: Mapped[list[FaceTemplate]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="FaceTemplate.id"
    )

    def active_consent(self, purpose: Purpose) -> Consent | None:
        return next(
            (c for c in self.consents if c.purpose == purpose and c.withdrawn_at is None), None
        )


class Consent(Base):
    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(40))
    text_version: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(40))
    given_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(default=None)

    customer: Mapped[Customer] = relationship(back_populates="consents")


class FaceTemplate(Base):
    __tablename__ = "face_templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[str] = mapped_column(String(64), index=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[dict[str, float]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="templates")


class GalleryState(Base):
    """A counter bumped by every template change, to tell a saved index is stale."""

    __tablename__ = "gallery_state"

    model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    """Who did what to whom, and why; never holds a template or a stranger's data."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    customer_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")
