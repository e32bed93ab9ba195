"""The customer card staff see: profile, consents and what happened in their stores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from facecrm.crm import activity, audit, customers
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import (
    Consent,
    Customer,
    CustomerPhoto,
    FaceTemplate,
    Feedback,
    Interest,
    Purchase,
    Visit,
)


def enrolled_photos(templates: Iterable[FaceTemplate]) -> int:
    """How many photos a customer's face was enrolled from: each photo stores one template
    per model (two with the cascade), so it is the count of the most-used model."""
    return max(Counter(t.model_id for t in templates).values(), default=0)


@dataclass(frozen=True, slots=True)
class Card:
    """The customer (its profile attributes read through: `card.name`) plus the card's
    activity, limited to the principal's stores."""

    customer: Customer
    consents: list[Consent]
    templates: int
    has_photo: bool
    recent_visits: Sequence[Visit]
    purchases: Sequence[Purchase]
    open_interests: Sequence[Interest]
    open_feedback: Sequence[Feedback]

    def __getattr__(self, name: str) -> object:
        return getattr(self.customer, name)


def card(session: Session, principal: Principal, customer_id: str) -> Card:
    """The card, with activity limited to the principal's stores; the lookup is audited."""
    principal.require(Permission.CUSTOMERS_READ)
    customer = customers.load(session, customer_id)
    f = activity.Filters(customer_id=customer_id, limit=10)
    out = Card(
        customer,
        list(customer.consents),
        enrolled_photos(customer.templates),
        customer.show_photo and session.get(CustomerPhoto, customer_id) is not None,
        activity.visits(session, principal, f),
        activity.purchases(session, principal, f),
        activity.interests(session, principal, f, open_only=True),
        activity.feedback(session, principal, f, open_only=True),
    )
    audit.record(session, principal, "lookup", customer_id)
    return out
