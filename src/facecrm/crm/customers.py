"""Customer records and consents: create, update, search, consent, export."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from facecrm.crm import accounts, audit, consent_text, enrollment
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import (
    Consent,
    ConsentText,
    Customer,
    FaceTemplate,
    Feedback,
    Interest,
    PaymentProfile,
    PaySession,
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
    """A consent as the customer gave it.

    `text` names the text shown: its id (what pages send), a version (older clients: that
    version in `language`), or None (the active text in `language`). `language` defaults
    to the store's (`crm.enrollment`). `store_id` only picks one of the principal's own
    stores (see `place`); who witnessed it is always the principal. `age_confirmed` is
    the age the customer confirmed being at least, where the store asks (`min_age`).
    """

    purpose: Purpose
    text: int | str | None
    channel: str
    store_id: str | None = None
    language: str | None = None
    age_confirmed: int | None = None


def place(
    session: Session, principal: Principal, requested: str | None, *, required: bool = True
) -> str | None:
    """The store a consent is given or withdrawn in: the principal's, never the client's word.

    A device's store; a staff member's only store; for staff of several stores the one
    `requested` among theirs (none named: `store_required`, unless not `required`, e.g. a
    withdrawal, which nothing may block: then None); for chain-wide staff the store
    `requested`, or None (head office). A store that is not the principal's is 403.
    """
    if requested is not None:
        principal.require_store(requested)
        accounts.get_store(session, requested)
        return requested
    if principal.stores is None or not principal.stores:
        return None
    if len(principal.stores) == 1:
        return next(iter(principal.stores))
    if not required:
        return None
    raise InvalidError(
        "you work in several stores: say in which one (store_id)", reason="store_required"
    )


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
    principal.require(Permission.CUSTOMERS_WRITE)
    customer = Customer(name="")
    _apply(session, customer, {"name": "", **values})
    session.add(customer)
    session.flush()
    audit.record(session, principal, "customer_create", customer.id)
    return customer


def update(
    session: Session, principal: Principal, customer_id: str, values: dict[str, object]
) -> Customer:
    principal.require(Permission.CUSTOMERS_WRITE)
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
) -> list[Customer]:
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
    return found


def give_consent(
    session: Session, principal: Principal, customer_id: str, grant: ConsentGrant
) -> Consent:
    """Record a consent; an active one of the same purpose is replaced (history kept).

    The text must exist, be active and be for the purpose (`consent_text.resolve`); the
    store is the principal's (`place`), the witness the principal itself. Where the store
    asks for a minimum age, a recognition consent needs `age_confirmed` at least that
    (reason `age_not_confirmed`).
    """
    principal.require(Permission.CUSTOMERS_WRITE)
    if not grant.channel.strip() or len(grant.channel) > 40:
        raise InvalidError("a consent needs the channel it was given through")
    store_id = place(session, principal, grant.store_id)
    customer = load(session, customer_id)
    options = enrollment.effective(session, store_id)
    text = _text_shown(session, grant, options.language)
    asks_age = grant.purpose == Purpose.IN_STORE_RECOGNITION and options.min_age > 0
    if asks_age and (grant.age_confirmed or 0) < options.min_age:
        raise InvalidError(
            f"the customer must confirm being at least {options.min_age} years old",
            reason="age_not_confirmed",
        )
    previous = customer.active_consent(grant.purpose)
    if previous is not None:  # superseded, not withdrawn: the customer agreed again
        previous.withdrawn_at = utcnow()
        previous.withdrawn_by = principal.label[:200]
        previous.withdrawn_store_id = store_id
        previous.withdrawn_channel = "replaced"
    consent = Consent(
        purpose=grant.purpose,
        text_version=text.version,
        text_id=text.id,
        text=text,
        channel=grant.channel,
        store_id=store_id,
        witness=principal.label[:200],
        witness_id=principal.id[:32],
        age_confirmed=grant.age_confirmed,
    )
    customer.consents.append(consent)
    session.flush()
    audit.record(
        session,
        principal,
        "consent_give",
        customer.id,
        store_id,
        purpose=grant.purpose.value,
        text_id=text.id,
        text_version=text.version,
        language=text.language,
        channel=grant.channel,
    )
    return consent


def _text_shown(session: Session, grant: ConsentGrant, store_language: str) -> ConsentText:
    """The text of `grant` (see `ConsentGrant.text`); without a language named, the store's,
    then English (the shipped text) when the store's has no translation."""
    text_id = grant.text if isinstance(grant.text, int) else None
    version = grant.text if isinstance(grant.text, str) else None
    if version is not None and not version.strip():
        raise InvalidError("a consent needs the version of the text shown")
    language = grant.language or store_language
    try:
        return consent_text.resolve(
            session, grant.purpose, text_id=text_id, version=version, language=language
        )
    except InvalidError as exc:
        missing = exc.reason in {"bad_consent_version", "no_consent_text"}
        if not missing or grant.language is not None or language == "en":
            raise
    return consent_text.resolve(session, grant.purpose, version=version, language="en")


def withdraw_consent(
    session: Session,
    principal: Principal,
    customer_id: str,
    purpose: Purpose,
    channel: str = "api",
    store_id: str | None = None,
) -> Consent:
    """Mark the active consent withdrawn, with who, where and how (the caller deletes what
    it covered). The store is the principal's (`place`; never required: nothing may block
    a withdrawal)."""
    principal.require(Permission.CUSTOMERS_WRITE)
    if not channel.strip() or len(channel) > 40:
        raise InvalidError("a withdrawal needs the channel it came through")
    where = place(session, principal, store_id, required=False)
    customer = load(session, customer_id)
    consent = customer.active_consent(purpose)
    if consent is None:
        raise NotFoundError(f"no active {purpose.value} consent")
    consent.withdrawn_at = utcnow()
    consent.withdrawn_by = principal.label[:200]
    consent.withdrawn_store_id = where
    consent.withdrawn_channel = channel
    session.flush()
    audit.record(
        session,
        principal,
        "consent_withdraw",
        customer.id,
        where,
        purpose=purpose.value,
        channel=channel,
    )
    return consent


@dataclass(frozen=True, slots=True)
class Export:
    """Everything held about a customer (templates by metadata only: see the API's
    `ExportOut`, which never carries a vector)."""

    customer: Customer
    consents: list[Consent]
    face_templates: list[FaceTemplate]
    enrollment_photo_kept: bool
    visits: Sequence[Visit]
    purchases: Sequence[Purchase]
    interests: Sequence[Interest]
    feedback: Sequence[Feedback]
    payment: PaymentSummary | None = None
    face_payments: Sequence[PaySession] = ()


@dataclass(frozen=True, slots=True)
class PaymentSummary:
    """A face payment set-up as the customer may see it: the wallet token only by its last
    4 characters, the phone digits not at all (they are kept as a MAC)."""

    provider: str
    token_hint: str
    currency: str
    limit_per_transaction: int
    limit_per_day: int
    failed_step_ups: int
    locked_until: datetime | None
    created_at: datetime


def payment_summary(profile: PaymentProfile | None) -> PaymentSummary | None:
    if profile is None:
        return None
    return PaymentSummary(
        profile.provider,
        profile.token[-4:],
        profile.currency,
        profile.limit_per_transaction,
        profile.limit_per_day,
        profile.failed_step_ups,
        profile.locked_until,
        profile.created_at,
    )


def face_payments(
    session: Session,
    customer_id: str,
    limit: int | None = None,
    stores: frozenset[str] | None = None,
) -> list[PaySession]:
    """The customer's face payment sessions, newest first, in `stores` (None: every
    store); the caller audits the read."""
    stmt = (
        select(PaySession)
        .where(PaySession.customer_id == customer_id)
        .order_by(PaySession.created_at.desc())
        .limit(limit)
    )
    if stores is not None:
        stmt = stmt.where(PaySession.store_id.in_(stores))
    return list(session.scalars(stmt))


def export(session: Session, principal: Principal, customer_id: str) -> Export:
    """Everything held about a customer; complete and chain-wide (every store's
    activity), hence admins only."""
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
    return Export(
        customer,
        list(customer.consents),
        list(customer.templates),
        customer.photo is not None,
        visits,
        purchases,
        interests,
        feedback,
        payment_summary(session.get(PaymentProfile, customer.id)),
        face_payments(session, customer.id),
    )


def identified(session: Session, principal: Principal, ids: Sequence[str]) -> dict[str, Customer]:
    """The customers an identification named (for its answer: name, tier), by id.

    Not audited again: the identification that produced `ids` audited each match.
    """
    principal.require(Permission.IDENTIFY)
    found = session.scalars(select(Customer).where(Customer.id.in_(list(ids))))
    return {c.id: c for c in found}
