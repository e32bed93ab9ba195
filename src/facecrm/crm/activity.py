"""What happens in stores: visits, purchases, interests and feedback.

Every write names a store the principal may act in; every listing is limited
to the stores the principal may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from facecrm.crm import accounts, audit, sync
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.customers import load
from facecrm.crm.errors import InvalidError, NotFoundError
from facecrm.crm.models import Feedback, Interest, Purchase, PurchaseItem, Visit, utcnow


@dataclass(frozen=True, slots=True)
class Filters:
    """Listing filters; `None` means any."""

    store_id: str | None = None
    customer_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0
    include_disputed: bool = False  # visits staff said were not this customer


def _target(session: Session, principal: Principal, customer_id: str, store_id: str) -> None:
    """Check that the store is the principal's and that store and customer exist."""
    principal.require_store(store_id)
    accounts.get_store(session, store_id)
    load(session, customer_id)


Scoped = TypeVar("Scoped", Interest, Feedback)

CLOCK_SKEW = timedelta(minutes=5)
MAX_TOTAL_CENTS = 10**9
VISIT_SOURCES: dict[str, frozenset[str]] = {
    # who may say how a visit was noticed: only a store agent's camera says "agent"
    "agent": frozenset({"agent", "identify"}),
    "pos": frozenset({"identify", "manual"}),
    "staff": frozenset({"identify", "manual"}),
}


def check_time(at: datetime | None, what: str) -> datetime:
    """The time of an event, or now; refused when in the future beyond clock skew.

    A visit dated 9999-12-31 would be "the last visit" for ever and hide every
    real one (same-visit window, alert rules, retention).
    """
    now = utcnow()
    if at is None:
        return now
    if at.tzinfo is None:  # internal callers' naive times are UTC (see models.UTCDateTime)
        at = at.replace(tzinfo=UTC)
    if at > now + CLOCK_SKEW:
        raise InvalidError(f"the {what} time is in the future")
    return at


def check_visit_source(principal: Principal, source: str) -> None:
    kind = principal.role if principal.kind == "device" else principal.kind
    allowed = VISIT_SOURCES.get(kind)
    if allowed is not None and source not in allowed:  # the system (CLI) may say anything
        raise InvalidError(f"a {kind} may not record a visit with source {source!r}")


def _visible(session: Session, principal: Principal, model: type[Scoped], row_id: int) -> Scoped:
    """A row of the principal's stores; another store's row is as unknown as a missing one."""
    row = session.get(model, row_id)
    if row is None or not principal.may_act_in(row.store_id):
        raise NotFoundError(f"no {model.__tablename__} entry with id {row_id}")
    return row


def _listing(model: Any, time_col: Any, principal: Principal, f: Filters) -> Select[Any]:
    stmt = select(model).order_by(time_col.desc(), model.id.desc()).limit(f.limit).offset(f.offset)
    visible = principal.visible_stores()
    if visible is not None:
        stmt = stmt.where(model.store_id.in_(visible))
    if f.store_id is not None:
        stmt = stmt.where(model.store_id == f.store_id)
    if f.customer_id is not None:
        stmt = stmt.where(model.customer_id == f.customer_id)
    if f.since is not None:
        stmt = stmt.where(time_col >= f.since)
    if f.until is not None:
        stmt = stmt.where(time_col < f.until)
    return stmt


def record_visit(
    session: Session,
    principal: Principal,
    customer_id: str,
    store_id: str,
    source: str,
    similarity: float | None = None,
    at: datetime | None = None,
    camera: str | None = None,
) -> Visit:
    principal.require(Permission.VISITS_WRITE)
    _target(session, principal, customer_id, store_id)
    check_visit_source(principal, source)
    visit = Visit(
        customer_id=customer_id,
        store_id=store_id,
        source=source,
        similarity=similarity,
        device_id=principal.id if principal.kind == "device" else None,
        at=check_time(at, "visit"),
        camera=camera,
    )
    session.add(visit)
    session.flush()
    sync.record_visit(session, customer_id, store_id)  # a store-scoped agent learns them
    audit.record(session, principal, "visit", customer_id, store_id, source=source)
    return visit


def visits(session: Session, principal: Principal, f: Filters) -> Sequence[Visit]:
    """The visits; a disputed one ("not this person") is not the customer's history."""
    principal.require(Permission.ACTIVITY_READ)
    stmt = _listing(Visit, Visit.at, principal, f)
    if not f.include_disputed:
        stmt = stmt.where(Visit.disputed.is_(False))
    return session.scalars(stmt).all()


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


def add_purchase(
    session: Session,
    principal: Principal,
    customer_id: str,
    store_id: str,
    items: Sequence[Item],
    currency: str = "EUR",
    at: datetime | None = None,
    paid_by: str | None = None,
) -> Purchase:
    """A purchase on the customer, in one of the principal's stores; `paid_by` "face" when
    face checkout authorised it (`payflow.confirm`). Audited `purchase`."""
    principal.require(Permission.PURCHASES_WRITE)
    _target(session, principal, customer_id, store_id)
    if not items:
        raise InvalidError("a purchase needs at least one item")
    if any(i.quantity <= 0 or i.unit_price_cents < 0 for i in items):
        raise InvalidError("quantities must be positive and prices not negative")
    total = sum(i.quantity * i.unit_price_cents for i in items)
    if total > MAX_TOTAL_CENTS:  # also keeps the sum inside a 32-bit column
        raise InvalidError(f"the total may not exceed {MAX_TOTAL_CENTS} cents")
    purchase = Purchase(
        customer_id=customer_id,
        store_id=store_id,
        currency=currency.upper(),
        total_cents=total,
        paid_by=paid_by,
        at=check_time(at, "purchase"),
        items=[
            PurchaseItem(
                sku=i.sku, name=i.name, quantity=i.quantity, unit_price_cents=i.unit_price_cents
            )
            for i in items
        ],
    )
    session.add(purchase)
    session.flush()
    audit.record(session, principal, "purchase", customer_id, store_id)
    return purchase


def purchases(session: Session, principal: Principal, f: Filters) -> Sequence[Purchase]:
    principal.require(Permission.ACTIVITY_READ)
    stmt = _listing(Purchase, Purchase.at, principal, f).options(selectinload(Purchase.items))
    return session.scalars(stmt).all()


def add_interest(
    session: Session,
    principal: Principal,
    customer_id: str,
    store_id: str,
    product: str,
    sku: str | None = None,
    out_of_stock: bool = False,
) -> Interest:
    principal.require(Permission.ACTIVITY_WRITE)
    _target(session, principal, customer_id, store_id)
    if not product.strip():
        raise InvalidError("the product is empty")
    interest = Interest(
        customer_id=customer_id,
        store_id=store_id,
        product=product.strip(),
        sku=sku,
        out_of_stock=out_of_stock,
    )
    session.add(interest)
    session.flush()
    audit.record(session, principal, "interest", customer_id, store_id)
    return interest


def update_interest(
    session: Session,
    principal: Principal,
    interest_id: int,
    resolved: bool | None = None,
    out_of_stock: bool | None = None,
) -> Interest:
    principal.require(Permission.ACTIVITY_WRITE)
    interest = _visible(session, principal, Interest, interest_id)
    if out_of_stock is not None:
        interest.out_of_stock = out_of_stock
    if resolved is not None:
        interest.resolved = resolved
        interest.resolved_at = utcnow() if resolved else None
    session.flush()
    audit.record(session, principal, "interest_update", interest.customer_id, interest.store_id)
    return interest


def interests(
    session: Session, principal: Principal, f: Filters, open_only: bool = False
) -> Sequence[Interest]:
    principal.require(Permission.ACTIVITY_READ)
    stmt = _listing(Interest, Interest.created_at, principal, f)
    if open_only:
        stmt = stmt.where(Interest.resolved.is_(False))
    return session.scalars(stmt).all()


def add_feedback(
    session: Session,
    principal: Principal,
    customer_id: str,
    store_id: str,
    text: str,
    rating: int | None = None,
) -> Feedback:
    principal.require(Permission.ACTIVITY_WRITE)
    _target(session, principal, customer_id, store_id)
    if rating is not None and not 1 <= rating <= 5:
        raise InvalidError("the rating must be between 1 and 5")
    feedback = Feedback(customer_id=customer_id, store_id=store_id, text=text, rating=rating)
    session.add(feedback)
    session.flush()
    audit.record(session, principal, "feedback", customer_id, store_id)
    return feedback


def resolve_feedback(
    session: Session, principal: Principal, feedback_id: int, resolved: bool
) -> Feedback:
    principal.require(Permission.ACTIVITY_WRITE)
    feedback = _visible(session, principal, Feedback, feedback_id)
    feedback.resolved = resolved
    feedback.resolved_at = utcnow() if resolved else None
    session.flush()
    audit.record(session, principal, "feedback_update", feedback.customer_id, feedback.store_id)
    return feedback


def feedback(
    session: Session, principal: Principal, f: Filters, open_only: bool = False
) -> Sequence[Feedback]:
    principal.require(Permission.ACTIVITY_READ)
    stmt = _listing(Feedback, Feedback.at, principal, f)
    if open_only:
        stmt = stmt.where(Feedback.resolved.is_(False))
    return session.scalars(stmt).all()
