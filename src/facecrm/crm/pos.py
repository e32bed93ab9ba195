"""A till's look-up by loyalty id: attach a purchase to a customer without a face.

For POS devices only (`Permission.LOYALTY_LOOKUP`; staff, agents and kiosks are
refused), in the device's own store (the audit event names it). The loyalty id must
match exactly: no prefix, no pattern, no list -- a till that could search would be a way
to enumerate the customer base. The answer is the minimal card a till needs (id, name,
tier). Every look-up is audited, a miss too (by a keyed fingerprint of what was typed,
like searches), and each device has `Settings.pos_lookup_per_minute` of them.
"""

from __future__ import annotations

import math

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facecrm.crm import audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import FacecrmError, Forbidden, InvalidError, NotFoundError
from facecrm.crm.models import Customer, DeviceKind
from facecrm.crm.throttle import RateLimiter

MAX_LOYALTY_ID = 64  # customers.loyalty_id


class RateLimitedError(FacecrmError):
    """Too many look-ups from this device in the last minute (429, `Retry-After`)."""

    status = 429
    reason = "rate_limited"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many look-ups; try again in {self.retry_after} s")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def loyalty_card(
    sessions: sessionmaker[Session], principal: Principal, loyalty_id: str, limiter: RateLimiter
) -> Customer:
    """The customer whose loyalty id is exactly `loyalty_id`, or `NotFoundError`.

    Owns its transaction so that a miss is audited although the answer is an error.
    """
    principal.require(Permission.LOYALTY_LOOKUP)
    if principal.kind != "device" or principal.role != DeviceKind.POS or not principal.stores:
        raise Forbidden("only a store's POS device may look customers up by loyalty id")
    (store_id,) = principal.stores
    if not 0 < len(loyalty_id) <= MAX_LOYALTY_ID:
        raise InvalidError(f"a loyalty id has 1 to {MAX_LOYALTY_ID} characters")
    if not limiter.allow(principal.id):
        raise RateLimitedError(limiter.retry_after(principal.id))
    with db.transaction(sessions) as session:
        customer = session.scalar(select(Customer).where(Customer.loyalty_id == loyalty_id))
        audit.record(
            session,
            principal,
            "pos_lookup",
            customer.id if customer else None,
            store_id,
            found=customer is not None,
            query=audit.fingerprint(session, loyalty_id),
        )
    if customer is None:
        raise NotFoundError("no customer has this loyalty id")
    return customer
