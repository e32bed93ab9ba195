"""The system of record: SQLAlchemy 2 models (schema changes go through Alembic)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and read back aware (UTC) on every database.

    PostgreSQL's `timestamptz` keeps the instant, but SQLite has no time zone
    type: it would store `10:00+05:00` as `10:00` and read it back as 10:00
    UTC, five hours off. So every value is converted to UTC on the way in. A
    naive value is taken as UTC (what `utcnow` and older rows mean); the API
    refuses naive times from clients, so none arrive ambiguous from outside.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[object, object]] = {datetime: UTCDateTime()}


class Purpose(StrEnum):
    """What a customer consented to; each purpose is given and withdrawn separately."""

    IN_STORE_RECOGNITION = "in_store_recognition"
    FACE_PAYMENT = "face_payment"
    EXPERIENCE_ANALYTICS = "experience_analytics"
    MARKETING = "marketing"


class Tier(StrEnum):
    STANDARD = "standard"
    SILVER = "silver"
    GOLD = "gold"
    VIP = "vip"


class Role(StrEnum):
    """Staff roles; what each may do is decided in `facecrm.crm.authz`."""

    ADMIN = "admin"
    MANAGER = "manager"
    ASSOCIATE = "associate"
    AUDITOR = "auditor"


class DeviceKind(StrEnum):
    AGENT = "agent"
    POS = "pos"
    KIOSK = "kiosk"  # a self-service enrollment screen: the console's kiosk session only


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


staff_stores = Table(
    "staff_stores",
    Base.metadata,
    Column("staff_id", ForeignKey("staff_users.id", ondelete="CASCADE"), primary_key=True),
    Column("store_id", ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True),
)


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # carried in every token; bumped on disable and password change to void them all at once
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    stores: Mapped[list[Store]] = relationship(secondary=staff_stores, order_by="Store.code")


# "Alice" and "alice" would be two accounts that staff and the audit trail cannot tell apart
Index("uq_staff_users_username_lower", func.lower(StaffUser.username), unique=True)


class RevokedToken(Base):
    """A logged-out staff session (token id), refused until the token would have expired."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Device(Base):
    """A store agent or POS; authenticates with an API key stored only as a hash."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    store: Mapped[Store] = relationship()


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    preferred_name: Mapped[str | None] = mapped_column(String(200), default=None)
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    phone: Mapped[str | None] = mapped_column(String(40), default=None)
    loyalty_id: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    tier: Mapped[str] = mapped_column(String(20), default=Tier.STANDARD)
    preferences: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    notes: Mapped[str] = mapped_column(Text, default="")
    preferred_advisor_id: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), default=None
    )
    show_photo: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    consents: Mapped[list[Consent]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="Consent.given_at"
    )
    templates: Mapped[list[FaceTemplate]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="FaceTemplate.id"
    )
    photo: Mapped[CustomerPhoto | None] = relationship(cascade="all, delete-orphan")
    visits: Mapped[list[Visit]] = relationship(cascade="all, delete-orphan", order_by="Visit.at")
    purchases: Mapped[list[Purchase]] = relationship(
        cascade="all, delete-orphan", order_by="Purchase.at"
    )
    interests: Mapped[list[Interest]] = relationship(
        cascade="all, delete-orphan", order_by="Interest.created_at"
    )
    feedback: Mapped[list[Feedback]] = relationship(
        cascade="all, delete-orphan", order_by="Feedback.at"
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
    store_id: Mapped[str | None] = mapped_column(
        ForeignKey("stores.id", ondelete="SET NULL"), default=None
    )
    witness: Mapped[str | None] = mapped_column(String(200), default=None)
    given_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(default=None)
    # the evidence (0008): the exact text shown, who took the consent (the principal, not the
    # client's word) and who withdrew it, where and how
    text_id: Mapped[int] = mapped_column(ForeignKey("consent_texts.id", ondelete="RESTRICT"))
    witness_id: Mapped[str | None] = mapped_column(String(32), default=None)
    withdrawn_by: Mapped[str | None] = mapped_column(String(200), default=None)
    withdrawn_store_id: Mapped[str | None] = mapped_column(
        ForeignKey("stores.id", ondelete="SET NULL"), default=None
    )
    withdrawn_channel: Mapped[str | None] = mapped_column(String(40), default=None)
    age_confirmed: Mapped[int | None] = mapped_column(Integer, default=None)  # "at least N"

    customer: Mapped[Customer] = relationship(back_populates="consents")
    text: Mapped[ConsentText] = relationship(lazy="joined")


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


class CustomerPhoto(Base):
    """The enrollment photo shown on the staff card, kept only when the customer agreed."""

    __tablename__ = "customer_photos"

    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(20))  # agent, identify, manual
    device_id: Mapped[str | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), default=None
    )
    similarity: Mapped[float | None] = mapped_column(Float, default=None)
    # the agent's camera label (credentials stripped); staff said "not this person" (0009)
    camera: Mapped[str | None] = mapped_column(String(100), default=None)
    disputed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Purchase(Base):
    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    total_cents: Mapped[int] = mapped_column(Integer)
    paid_by: Mapped[str | None] = mapped_column(String(20), default=None)  # 0020: "face"

    items: Mapped[list[PurchaseItem]] = relationship(
        cascade="all, delete-orphan", order_by="PurchaseItem.id"
    )


class PurchaseItem(Base):
    __tablename__ = "purchase_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    purchase_id: Mapped[int] = mapped_column(
        ForeignKey("purchases.id", ondelete="CASCADE"), index=True
    )
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)


class Interest(Base):
    """A product the customer wanted; `out_of_stock` when the store could not sell it."""

    __tablename__ = "interests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    product: Mapped[str] = mapped_column(String(200))
    sku: Mapped[str | None] = mapped_column(String(64), default=None)
    out_of_stock: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    text: Mapped[str] = mapped_column(Text, default="")
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)


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
    store_id: Mapped[str | None] = mapped_column(String(32), default=None)
    action: Mapped[str] = mapped_column(String(60))
    customer_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")
    # the hash chain (see facecrm.crm.auditchain): filled in right after commit
    prev_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    hash: Mapped[str | None] = mapped_column(String(64), default=None, index=True)


class AgentEvent(Base):
    """Idempotency record of an event a store agent delivered.

    The key is chosen by the agent, so it is unique per device only: another
    device reusing it (by accident or on purpose) must not suppress this one's events.
    """

    __tablename__ = "agent_events"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20))  # visit, same_visit, ignored


class StoreConfig(Base):
    """Per-store alert rules and webhook."""

    __tablename__ = "store_configs"

    store_id: Mapped[str] = mapped_column(
        ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True
    )
    rules: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(String(500), default=None)
    webhook_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")


class Shift(Base):
    """A staff member on shift in a store (for routing alerts to a preferred advisor)."""

    __tablename__ = "shifts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"))
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Alert(Base):
    """A notification to a store's staff, raised by a rule on a customer's visit."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[str | None] = mapped_column(  # None: not about a customer (0009)
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    visit_id: Mapped[int | None] = mapped_column(
        ForeignKey("visits.id", ondelete="CASCADE"), default=None
    )
    rule: Mapped[str] = mapped_column(String(200))  # fired rules, comma-separated
    message: Mapped[str] = mapped_column(Text)
    assignee_id: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    claimed_by: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), default=None
    )
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)
    # 0009: what kind of alert, its reasons in plain words, and how it was closed
    kind: Mapped[str] = mapped_column(String(40), default="arrival", server_default="arrival")
    reasons: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    closed_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    closed_by: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), default=None
    )
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)  # see AlertOutcome
    # 0016: the camera a camera_silent alert is about (an arrival's is its visit's camera)
    camera: Mapped[str | None] = mapped_column(String(100), default=None)


class CustomerKey(Base):
    """A customer's data key, wrapped by a master key; deleting it shreds their data."""

    __tablename__ = "customer_keys"

    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CameraHealth(Base):
    """When a store agent's camera last gave a frame, as the agent's heartbeat reports it.

    `camera` is the agent's masked name for it (a URL's password never reaches the server).
    `silent_alert_id` is set while the camera is silent (its `camera_silent` alert, 0016):
    the conditional update that sets it is what makes the alert raised once however many
    server processes look.
    """

    __tablename__ = "camera_health"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    camera: Mapped[str] = mapped_column(String(100), primary_key=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    first_reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)  # the last heartbeat
    last_frame_at: Mapped[datetime | None] = mapped_column(default=None)
    silent_alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alerts.id", ondelete="SET NULL"), default=None
    )


class ErasureLog(Base):
    """An erasure, recorded by a keyed hash of the customer id only (see `crm.erasures`).

    Written in the erasure's own transaction; `facecrm erasures replay` re-applies it
    after a backup from before it is restored.
    """

    __tablename__ = "erasure_log"

    ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class StoreReadiness(Base):
    """One set-up item of a store an admin confirmed (see `crm.readiness`).

    `value` is what was confirmed (the sign's and the consent text's versions, the
    retention settings): when it no longer matches, the item needs confirming again.
    """

    __tablename__ = "store_readiness"

    store_id: Mapped[str] = mapped_column(
        ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True
    )
    item: Mapped[str] = mapped_column(String(20), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    confirmed_by: Mapped[str] = mapped_column(String(100))
    confirmed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertOutcome(StrEnum):
    """How an alert was closed; a closed alert leaves the live list for the history."""

    GREETED = "greeted"
    DISMISSED = "dismissed"
    DISPUTED = "disputed"  # "not this person": the match was wrong
    RESOLVED = "resolved"  # what it was about ended by itself (a silent camera gives frames)


class MatchDispute(Base):
    """A match staff said was wrong ("not this person"), for the store's dispute report.

    Template-free facts only (when, where, which camera, whom it named, the scores), so the
    report can leave the server for `facecrm eval --disputes` without carrying a face.
    """

    __tablename__ = "match_disputes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(20))  # alert (an agent's visit) or lookup
    camera: Mapped[str | None] = mapped_column(String(100), default=None)
    matched_at: Mapped[datetime] = mapped_column()
    disputed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    similarity: Mapped[float | None] = mapped_column(Float, default=None)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    disputed_by: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="SET NULL"), default=None
    )
    visit_id: Mapped[int | None] = mapped_column(
        ForeignKey("visits.id", ondelete="SET NULL"), default=None
    )
    alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alerts.id", ondelete="SET NULL"), default=None
    )
    ref: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)  # a look-up's


class ConsentText(Base):
    """A consent text the chain wrote, in one language; never changed once saved.

    Consents point at the row they were given on, so an edit is a new row (a new
    version) and the old one is only deactivated. One active row per purpose and
    language: the text shown today.
    """

    __tablename__ = "consent_texts"
    __table_args__ = (
        UniqueConstraint("purpose", "version", "language", name="uq_consent_texts_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    purpose: Mapped[str] = mapped_column(String(40), index=True)
    version: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class EnrollmentSettings(Base):
    """How enrollment works: the chain's defaults (scope "*") and a store's overrides.

    A NULL field in a store's row inherits the chain's value; see `crm.enrollment`.
    """

    __tablename__ = "enrollment_settings"

    scope: Mapped[str] = mapped_column(String(32), primary_key=True)  # "*" or a store id
    language: Mapped[str | None] = mapped_column(String(16), default=None)
    ask_phone: Mapped[bool | None] = mapped_column(Boolean, default=None)
    ask_tier: Mapped[bool | None] = mapped_column(Boolean, default=None)
    min_age: Mapped[int | None] = mapped_column(Integer, default=None)  # 0: no confirmation
    kiosk_idle_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeviceStatus(Base):
    """What a device last told the server about itself (a heartbeat, not an event).

    Kept apart from `devices` so the frequent write never touches the key row; the
    agent sends its version and outbox depth as headers on the requests it makes anyway.
    """

    __tablename__ = "device_status"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    agent_version: Mapped[str | None] = mapped_column(String(40), default=None)
    queue_depth: Mapped[int | None] = mapped_column(Integer, default=None)


class WebhookDelivery(Base):
    """One attempt to deliver one event to a store's webhook.

    Holds no personal data: the event's id (e.g. `alert:42`), the outcome and a
    truncated error text; never the payload, the customer or the URL's answer body.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ThrottleCounter(Base):
    """One log-in or rate-limit counter, shared by every server process (`crm.throttle`).

    `key` is a keyed hash of what is counted (an address, a username, a staff id), never
    the value itself; times are seconds since the epoch (every process's wall clock);
    rows past `expires_at` mean nothing any more and are purged.
    """

    __tablename__ = "throttle_counters"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float] = mapped_column(Double)
    last_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double, index=True)


class StoreAnalytics(Base):
    """A store's anonymous-analytics settings (issue 13): the zones drawn on each camera and
    the switches for demographics and sentiment (both off by default: README, "Anonymous
    analytics"). Kept apart from `StoreConfig` (the alert rules and webhook).

    `zones` maps a camera's masked name to its zones, each `{"name", "points"}` in
    normalised coordinates, validated by `alerts.zones` before it is written.
    """

    __tablename__ = "store_analytics"

    store_id: Mapped[str] = mapped_column(
        ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True
    )
    zones: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    demographics_enabled: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    sentiment_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# -- self-enrollment on the customer's own phone (crm.selfservice) -----------------------


class SelfServiceLink(Base):
    """A store's self-enrollment link: the unguessable token in the QR code at its door.

    Not the store's id (which staff URLs show): a random value, replaced by a rotation
    when a poster leaks somewhere it should not be. A store without a row has no link.
    """

    __tablename__ = "self_service_links"

    store_id: Mapped[str] = mapped_column(
        ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True
    )
    token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OtpChallenge(Base):
    """A one-time code sent to an e-mail address or phone, waiting to be typed in.

    Holds only keyed hashes (of the destination and of the code), so a table dump tells
    nothing; deleted when used, after the last allowed attempt, or at expiry.
    """

    __tablename__ = "otp_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(16))  # enroll or signin
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"))
    destination_key: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class OtpOutbox(Base):
    """A code for the embedded sender to deliver (the default `OtpSender`; a deployment
    plugs in SMS or e-mail instead). The only place a destination is kept in clear, for
    as long as its challenge lives."""

    __tablename__ = "otp_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    challenge_id: Mapped[str] = mapped_column(
        ForeignKey("otp_challenges.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(10))  # email or sms
    destination: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class VerifiedContact(Base):
    """An e-mail address or phone a customer proved is theirs by a one-time code: the only
    key to their personal page (a contact staff typed in opens nothing)."""

    __tablename__ = "verified_contacts"

    contact_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(10))  # email or phone
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)


class CustomerIncentive(Base):
    """The chain's opt-in incentive as granted to a customer: once per customer."""

    __tablename__ = "customer_incentives"

    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    text: Mapped[str] = mapped_column(String(200))
    points: Mapped[int] = mapped_column(Integer, default=0)
    store_id: Mapped[str | None] = mapped_column(
        ForeignKey("stores.id", ondelete="SET NULL"), default=None
    )
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)


class GalleryChange(Base):
    """One change of the agents' gallery, for incremental sync (`crm.sync`).

    Ids only, never a template: `add` names a template (either model), `remove` a
    customer whose templates all went (withdrawal, erasure, retention), `scope` a customer
    who entered a store's scope (first visit there: store-scoped agents fetch them).
    An erased customer's `add` and `scope` rows are deleted with the erasure, so what is
    left of them is one `remove` row holding the opaque customer id, pruned with the log.
    `seq` is allocated under a row lock (`SyncMark` "seq"), so commit order is seq order.
    """

    __tablename__ = "gallery_changes"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(8))
    customer_id: Mapped[str] = mapped_column(String(32), index=True)
    template_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    store_id: Mapped[str | None] = mapped_column(String(32), default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class SyncMark(Base):
    """Counters of the sync log: "seq" (last allocated) and "pruned" (log starts after)."""

    __tablename__ = "sync_marks"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class FootfallAggregate(Base):
    """One anonymous counter (issue 13): store x hour x zone x metric x bucket.

    Written only by `crm.analytics.ingest` from agents' hourly aggregates, which are
    k-anonymous before they leave the agent (no bucket below `MIN_COUNT`): nothing here is
    about one person. A later report for the same key adds to `count`.
    """

    __tablename__ = "footfall_aggregates"
    __table_args__ = (
        UniqueConstraint("store_id", "hour", "zone", "metric", "bucket", name="uq_footfall_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"))
    hour: Mapped[datetime] = mapped_column(index=True)  # UTC, on the hour
    zone: Mapped[str] = mapped_column(String(20))
    metric: Mapped[str] = mapped_column(String(20))
    bucket: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PaymentProfile(Base):
    """A customer set up for face payment (issue 14): what the till needs besides the face.

    Never a card number: `token` is the opaque reference the payment provider's wallet
    issued (`crm.payments` refuses anything that looks like a PAN). The last 4 digits of
    the customer's phone, asked at step-up, are kept only as an HMAC under a key derived
    from the server secret (`phone_last4_mac`). Limits are in the currency's minor units.
    Deleted with the `face_payment` consent's withdrawal and with the customer.
    """

    __tablename__ = "payment_profiles"

    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    provider: Mapped[str] = mapped_column(String(40))
    token: Mapped[str] = mapped_column(String(200))
    phone_last4_mac: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    limit_per_transaction: Mapped[int] = mapped_column(BigInteger)
    limit_per_day: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # 0020: wrong step-up digits in a row (any session); 3 lock face payment for 15 minutes
    failed_step_ups: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(default=None)


class PaySession(Base):
    """One payment attempt at a till (`crm.payments`): amount, state, expiry.

    `idempotency_key` is the POS's key for retries of the same creation (unique per
    device); `request_mac` a digest of what was asked, so a reused key with another
    amount is refused rather than answered with the wrong session.
    """

    __tablename__ = "pay_sessions"
    __table_args__ = (
        UniqueConstraint("device_id", "idempotency_key", name="uq_pay_sessions_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    till: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(20))
    decline_reason: Mapped[str | None] = mapped_column(String(40), default=None)
    customer_id: Mapped[str | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL"), default=None, index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(100), default=None)
    request_mac: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # 0020: the state machine's memory between calls (`crm.payflow`)
    smile_after_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    no_face_bursts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    step_up_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    match_margin_z: Mapped[float | None] = mapped_column(Float, default=None)
    authorisation: Mapped[str | None] = mapped_column(Text, default=None)  # signed JSON
    authorised_at: Mapped[datetime | None] = mapped_column(default=None)
    provider_reference: Mapped[str | None] = mapped_column(String(200), default=None)
    purchase_id: Mapped[int | None] = mapped_column(
        ForeignKey("purchases.id", ondelete="SET NULL", name="fk_pay_sessions_purchase_id"),
        default=None,
    )
    confirmed_at: Mapped[datetime | None] = mapped_column(default=None)
