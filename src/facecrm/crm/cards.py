"""The customer card staff see: profile, consents and what happened in their stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from facecrm.crm import activity, audit, customers
from facecrm.crm.authz import Principal
from facecrm.crm.models import CustomerPhoto


def card(session: Session, principal: Principal, customer_id: str) -> dict[str, Any]:
    """The card, with activity limited to the principal's stores; the lookup is audited."""
    customer = customers.load(session, customer_id)
    f = activity.Filters(customer_id=customer_id, limit=10)
    out = {
        **customers.profile(customer),
        "consents": [customers.consent_dict(c) for c in customer.consents],
        "templates": len(customer.templates),
        "has_photo": customer.show_photo and session.get(CustomerPhoto, customer_id) is not None,
        "recent_visits": [customers.visit_dict(v) for v in activity.visits(session, principal, f)],
        "purchases": [
            customers.purchase_dict(p) for p in activity.purchases(session, principal, f)
        ],
        "open_interests": [
            customers.interest_dict(i)
            for i in activity.interests(session, principal, f, open_only=True)
        ],
        "open_feedback": [
            customers.feedback_dict(x)
            for x in activity.feedback(session, principal, f, open_only=True)
        ],
    }
    audit.record(session, principal, "lookup", customer_id)
    return out
