"""Customer records and consents: create, update, search, consent, export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from facecrm.crm import audit, consent_text
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import (
    Consent,
    Customer,
    Feedback,
    Interest,
    Purchase,
    Purpose,
    StaffUser,
    Tier,
    Visit,
    utcnow,
)

EDITABLE = (
    "name",
    "preferred_name",
    "email",
    "phone",
    "loyalty_id",
    "tier",
    "preferences",
    "notes",
    "preferred_advisor_id",
    "show_photo",
)


@dataclass(frozen=True, slots=True)
class ConsentGrant:
    """A consent as the customer gave it."""

    purpose: Purpose
    text_version: str
    channel: str
    store_id: str | None = None
    witness: str | None = None


def load(session: Session, customer_id: str) -> Customer:
    """A customer with consents and templates loaded, or `NotFoundError`."""
    customer = session.scalar(
        select(Customer)
        .where(Customer.id == customer_id)
        .options(selectinload(Customer.consents), selectinload(Customer.templates))
    )
    if customer is None:
        raise NotFoundError(f"no customer with id {customer_id!r}")
    return customer


OPTIONAL_TEXT = ("preferred_name", "email", "phone", "loyalty_id", "preferred_advisor_id")
MAX_LENGTH = {
    "name": 200,
    "preferred_name": 200,
    "email": 320,
    "phone": 40,
    "loyalty_id": 64,
    "notes": 10_000,
    "preferred_advisor_id": 32,
}
MAX_PREFERENCES = 50  # keys
MAX_PREFERENCE_KEY = 64
MAX_PREFERENCES_JSON = 4096  # bytes, serialised


def _check_sizes(values: dict[str, object]) -> None:
    """Bound every free-text field and the preferences (they are shown on every card)."""
    for key, limit in MAX_LENGTH.items():
        value = values.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise InvalidError(f"{key} must be text of at most {limit} characters")
    if "preferences" not in values:
        return
    prefs = values["preferences"]
    if not isinstance(prefs, dict) or len(prefs) > MAX_PREFERENCES:
        raise InvalidError(f"preferences must be an object of at most {MAX_PREFERENCES} keys")
    if any(not isinstance(k, str) or not 0 < len(k) <= MAX_PREFERENCE_KEY for k in prefs):
        raise InvalidError(f"preference names must have 1 to {MAX_PREFERENCE_KEY} characters")
    if not all(_flat(v) for v in prefs.values()):
        raise InvalidError("a preference is a value or a list of values, not a nested object")
    try:
        size = len(json.dumps(prefs, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidError("preferences must be plain JSON") from exc
    if size > MAX_PREFERENCES_JSON:
        raise InvalidError(f"preferences may not exceed {MAX_PREFERENCES_JSON} bytes as JSON")


def _flat(value: object) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (
        isinstance(value, list) and all(isinstance(v, scalar) for v in value)
    )


def _apply(session: Session, customer: Customer, values: dict[str, object]) -> None:
    values = {
        k: (None if k in OPTIONAL_TEXT and isinstance(v, str) and not v.strip() else v)
        for k, v in values.items()
    }  # an empty optional field means "none", never a value to be unique about
    unknown = set(values) - set(EDITABLE)
    if unknown:
        raise InvalidError(f"unknown customer fields: {', '.join(sorted(unknown))}")
    _check_sizes(values)
    if "name" in values and not str(values["name"] or "").strip():
        raise InvalidError("the customer's name is empty")
    if "tier" in values and values["tier"] not in {t.value for t in Tier}:
        raise InvalidError("tier must be standard, silver, gold or vip")
    if values.get("email"):  # here, not only in the API's schema: the console sends it too
        try:
            address = validate_email(str(values["email"]), check_deliverability=False)
        except EmailNotValidError as exc:
            raise InvalidError(f"not an e-mail address: {exc}") from None
        values["email"] = address.normalized
    loyalty = values.get("loyalty_id")
    if loyalty:
        clash = session.scalar(
            select(Customer.id).where(Customer.loyalty_id == loyalty, Customer.id != customer.id)
        )
        if clash is not None:
            raise ConflictError(f"loyalty id {loyalty!r} belongs to another customer")
    advisor = values.get("preferred_advisor_id")
    if advisor and session.get(StaffUser, advisor) is None:
        raise InvalidError(f"no staff user with id {advisor!r}")
    for key, value in values.items():
        setattr(customer, key, value.strip() if isinstance(value, str) and key == "name" else value)


def check_values(session: Session, values: dict[str, object]) -> None:
    """Run the rules of `create` on `values` without writing anything (bulk imports use it
    to name the column at fault)."""
    _apply(session, Customer(name=""), {"name": "", **values})


def create(session: Session, principal: Principal, values: dict[str, object]) -> Customer:
    customer = Customer(name="")
    _apply(session, customer, {"name": "", **values})
    session.add(customer)
    session.flush()
    audit.record(session, principal, "customer_create", customer.id)
    return customer


def update(
    session: Session, principal: Principal, customer_id: str, values: dict[str, object]
) -> Customer:
    customer = load(session, customer_id)
    _apply(session, customer, values)
    customer.updated_at = utcnow()
    session.flush()
    audit.record(session, principal, "customer_update", customer.id, fields=sorted(values))
    return customer


def search(session: Session, query: str = "", limit: int = 50, offset: int = 0) -> list[Customer]:
    """Customers whose name, preferred name, email, phone or loyalty id contains `query`."""
    stmt = select(Customer).order_by(Customer.name, Customer.id).limit(limit).offset(offset)
    if query.strip():
        like = f"%{query.strip().lower()}%"
        stmt = stmt.where(
            or_(
                *(
                    col.is_not(None) & col.ilike(like)
                    for col in (
                        Customer.name,
                        Customer.preferred_name,
                        Customer.email,
                        Customer.phone,
                        Customer.loyalty_id,
                    )
                )
            )
        )
    return list(session.scalars(stmt))


def find(
    session: Session,
    principal: Principal,
    query: str = "",
    limit: int = 50,
    offset: int = 0,
    channel: str = "api",
) -> list[dict[str, object]]:
    """A search as staff see it: summaries only; the query and every id returned are audited.

    A list is for picking the right person, so it carries no contact details,
    notes or preferences: the full card is a separate, per-customer audited
    lookup. The query is personal data too; it goes to the (access-controlled)
    audit trail and nowhere else.
    """
    principal.require(Permission.CUSTOMERS_READ)
    found = search(session, query, limit, offset)
    audit.record(
        session,
        principal,
        "customer_search",
        query_fingerprint=audit.fingerprint(session, query),  # never the text: see there
        query_length=len(audit.normalise(query)),
        ids=[c.id for c in found],
        results=len(found),
        channel=channel,
    )
    return [summary(c) for c in found]


def give_consent(
    session: Session, principal: Principal, customer_id: str, grant: ConsentGrant
) -> Consent:
    """Record a consent; an active one of the same purpose is replaced (history kept).

    The text version must be one of `consent_text.TEXTS` (reason `bad_consent_version`).
    """
    customer = load(session, customer_id)
    if not grant.text_version.strip() or not grant.channel.strip():
        raise InvalidError("a consent needs the version of the text shown and the channel")
    consent_text.check(grant.text_version)
    previous = customer.active_consent(grant.purpose)
    if previous is not None:
        previous.withdrawn_at = utcnow()
    consent = Consent(
        purpose=grant.purpose,
        text_version=grant.text_version,
        channel=grant.channel,
        store_id=grant.store_id,
        witness=grant.witness,
    )
    customer.consents.append(consent)
    session.flush()
    audit.record(
        session,
        principal,
        "consent_give",
        customer.id,
        grant.store_id,
        purpose=grant.purpose.value,
        text_version=grant.text_version,
    )
    return consent


def withdraw_consent(
    session: Session, principal: Principal, customer_id: str, purpose: Purpose
) -> Consent:
    """Mark the active consent withdrawn (the caller deletes what it covered)."""
    customer = load(session, customer_id)
    consent = customer.active_consent(purpose)
    if consent is None:
        raise NotFoundError(f"no active {purpose.value} consent")
    consent.withdrawn_at = utcnow()
    session.flush()
    audit.record(session, principal, "consent_withdraw", customer.id, purpose=purpose.value)
    return consent


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def export(session: Session, principal: Principal, customer_id: str) -> dict[str, object]:
    """Everything held about a customer, as JSON-ready data (templates by metadata only).

    Complete and chain-wide (every store's activity), hence admins only.
    """
    principal.require(Permission.CUSTOMERS_EXPORT)
    customer = load(session, customer_id)
    visits = session.scalars(select(Visit).where(Visit.customer_id == customer.id)).all()
    purchases = session.scalars(
        select(Purchase)
        .where(Purchase.customer_id == customer.id)
        .options(selectinload(Purchase.items))
    ).all()
    interests = session.scalars(select(Interest).where(Interest.customer_id == customer.id)).all()
    feedback = session.scalars(select(Feedback).where(Feedback.customer_id == customer.id)).all()
    audit.record(session, principal, "customer_export", customer.id)
    return {
        "customer": profile(customer),
        "consents": [consent_dict(c) for c in customer.consents],
        "face_templates": [
            {
                "id": t.id,
                "model_id": t.model_id,
                "source": t.source,
                "quality": t.quality,
                "created_at": _ts(t.created_at),
                "vector": "held for recognition; never exported",
            }
            for t in customer.templates
        ],
        "enrollment_photo_kept": customer.photo is not None,
        "visits": [visit_dict(v) for v in visits],
        "purchases": [purchase_dict(p) for p in purchases],
        "interests": [interest_dict(i) for i in interests],
        "feedback": [feedback_dict(f) for f in feedback],
    }


def summary(c: Customer) -> dict[str, object]:
    """What a search result shows: enough to tell namesakes apart, nothing more."""
    return {
        "id": c.id,
        "name": c.name,
        "preferred_name": c.preferred_name,
        "tier": c.tier,
        "loyalty_id": c.loyalty_id,
    }


def profile(c: Customer) -> dict[str, object]:
    return {
        "id": c.id,
        "name": c.name,
        "preferred_name": c.preferred_name,
        "email": c.email,
        "phone": c.phone,
        "loyalty_id": c.loyalty_id,
        "tier": c.tier,
        "preferences": c.preferences,
        "notes": c.notes,
        "preferred_advisor_id": c.preferred_advisor_id,
        "show_photo": c.show_photo,
        "created_at": _ts(c.created_at),
        "updated_at": _ts(c.updated_at),
    }


def consent_dict(c: Consent) -> dict[str, object]:
    return {
        "purpose": c.purpose,
        "text_version": c.text_version,
        "channel": c.channel,
        "store_id": c.store_id,
        "witness": c.witness,
        "given_at": _ts(c.given_at),
        "withdrawn_at": _ts(c.withdrawn_at),
        "active": c.withdrawn_at is None,
    }


def visit_dict(v: Visit) -> dict[str, object]:
    return {
        "id": v.id,
        "customer_id": v.customer_id,
        "store_id": v.store_id,
        "at": _ts(v.at),
        "source": v.source,
        "similarity": v.similarity,
    }


def purchase_dict(p: Purchase) -> dict[str, object]:
    return {
        "id": p.id,
        "customer_id": p.customer_id,
        "store_id": p.store_id,
        "at": _ts(p.at),
        "currency": p.currency,
        "total_cents": p.total_cents,
        "items": [
            {
                "sku": i.sku,
                "name": i.name,
                "quantity": i.quantity,
                "unit_price_cents": i.unit_price_cents,
            }
            for i in p.items
        ],
    }


def interest_dict(i: Interest) -> dict[str, object]:
    return {
        "id": i.id,
        "customer_id": i.customer_id,
        "store_id": i.store_id,
        "product": i.product,
        "sku": i.sku,
        "out_of_stock": i.out_of_stock,
        "resolved": i.resolved,
        "created_at": _ts(i.created_at),
        "resolved_at": _ts(i.resolved_at),
    }


def feedback_dict(f: Feedback) -> dict[str, object]:
    return {
        "id": f.id,
        "customer_id": f.customer_id,
        "store_id": f.store_id,
        "at": _ts(f.at),
        "rating": f.rating,
        "text": f.text,
        "resolved": f.resolved,
        "resolved_at": _ts(f.resolved_at),
    }
