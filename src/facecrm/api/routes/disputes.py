"""The store's report of disputed matches, and the POS look-up by loyalty id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from facecrm.api.deps import CrmDep, SessionDep, allow
from facecrm.api.schemas import PROBLEMS, DisputeOut, Instant, PosCardOut
from facecrm.crm import disputes, pos
from facecrm.crm.authz import Permission, Principal

router = APIRouter(tags=["disputes and POS"], responses=PROBLEMS)
DisputeReader = Annotated[Principal, Depends(allow(Permission.DISPUTES_READ))]
LoyaltyLookup = Annotated[Principal, Depends(allow(Permission.LOYALTY_LOOKUP))]


@router.get("/stores/{store_id}/disputes", response_model=list[DisputeOut])
def store_disputes(
    store_id: str,
    session: SessionDep,
    principal: DisputeReader,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[DisputeOut]:
    """Matches the store's staff said were wrong, oldest first (`facecrm disputes export`
    writes the same facts for `facecrm eval --disputes`)."""
    window = disputes.Window(since, until, limit, offset)
    found = disputes.report(session, principal, store_id, window)
    return [DisputeOut.model_validate(d) for d in found]


@router.get("/pos/customer", response_model=PosCardOut)
def pos_customer(
    request: Request,
    crm: CrmDep,
    principal: LoyaltyLookup,
    loyalty_id: Annotated[str, Query(min_length=1, max_length=pos.MAX_LOYALTY_ID)],
) -> PosCardOut:
    """The customer with exactly this loyalty id (POS devices only; audited, rate-limited).

    In the query string, not the path: access logs keep paths, never query strings.
    """
    limiter = request.app.state.pos_limiter
    return PosCardOut.model_validate(pos.loyalty_card(crm.sessions, principal, loyalty_id, limiter))
