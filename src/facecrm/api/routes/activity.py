"""Visits, purchases, interests and feedback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from facecrm.api.deps import allow, get_crm
from facecrm.api.schemas import (
    FeedbackIn,
    FeedbackPatch,
    Instant,
    InterestIn,
    InterestPatch,
    PurchaseIn,
    RowId,
    VisitIn,
)
from facecrm.crm import activity, db
from facecrm.crm.activity import Filters, Item
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.customers import feedback_dict, interest_dict, purchase_dict, visit_dict
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["activity"])
ReadActivity = Depends(allow(Permission.ACTIVITY_READ))


def filters(
    store_id: Annotated[str | None, Query(max_length=32)] = None,
    customer_id: Annotated[str | None, Query(max_length=32)] = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Filters:
    return Filters(store_id, customer_id, since, until, limit, offset)


@router.get("/visits")
def list_visits(
    f: Filters = Depends(filters),
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = ReadActivity,
) -> list[dict[str, Any]]:
    with crm.sessions() as session:
        return [visit_dict(v) for v in activity.visits(session, principal, f)]


@router.post("/visits", status_code=201)
def record_visit(
    body: VisitIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.VISITS_WRITE)),
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        visit = activity.record_visit(
            session,
            principal,
            body.customer_id,
            body.store_id,
            body.source,
            body.similarity,
            body.at,
        )
        return visit_dict(visit)


@router.get("/purchases")
def list_purchases(
    f: Filters = Depends(filters),
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = ReadActivity,
) -> list[dict[str, Any]]:
    with crm.sessions() as session:
        return [purchase_dict(p) for p in activity.purchases(session, principal, f)]


@router.post("/customers/{customer_id}/purchases", status_code=201)
def add_purchase(
    customer_id: str,
    body: PurchaseIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.PURCHASES_WRITE)),
) -> dict[str, Any]:
    items = [Item(i.sku, i.name, i.quantity, i.unit_price_cents) for i in body.items]
    with db.transaction(crm.sessions) as session:
        purchase = activity.add_purchase(
            session, principal, customer_id, body.store_id, items, body.currency, body.at
        )
        return purchase_dict(purchase)


@router.get("/interests")
def list_interests(
    f: Filters = Depends(filters),
    open_only: bool = False,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = ReadActivity,
) -> list[dict[str, Any]]:
    with crm.sessions() as session:
        return [interest_dict(i) for i in activity.interests(session, principal, f, open_only)]


@router.post("/customers/{customer_id}/interests", status_code=201)
def add_interest(
    customer_id: str,
    body: InterestIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.ACTIVITY_WRITE)),
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        interest = activity.add_interest(
            session,
            principal,
            customer_id,
            body.store_id,
            body.product,
            body.sku,
            body.out_of_stock,
        )
        return interest_dict(interest)


@router.patch("/interests/{interest_id}")
def update_interest(
    interest_id: RowId,
    body: InterestPatch,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.ACTIVITY_WRITE)),
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        interest = activity.update_interest(
            session, principal, interest_id, body.resolved, body.out_of_stock
        )
        return interest_dict(interest)


@router.get("/feedback")
def list_feedback(
    f: Filters = Depends(filters),
    open_only: bool = False,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = ReadActivity,
) -> list[dict[str, Any]]:
    with crm.sessions() as session:
        return [feedback_dict(x) for x in activity.feedback(session, principal, f, open_only)]


@router.post("/customers/{customer_id}/feedback", status_code=201)
def add_feedback(
    customer_id: str,
    body: FeedbackIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.ACTIVITY_WRITE)),
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        item = activity.add_feedback(
            session, principal, customer_id, body.store_id, body.text, body.rating
        )
        return feedback_dict(item)


@router.patch("/feedback/{feedback_id}")
def update_feedback(
    feedback_id: RowId,
    body: FeedbackPatch,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.ACTIVITY_WRITE)),
) -> dict[str, Any]:
    with db.transaction(crm.sessions) as session:
        return feedback_dict(
            activity.resolve_feedback(session, principal, feedback_id, body.resolved)
        )
