"""Visits, purchases, interests and feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from facecrm.api.deps import (
    ActivityReader,
    ActivityWriter,
    PurchaseWriter,
    SessionDep,
    VisitWriter,
)
from facecrm.api.schemas import (
    PROBLEMS,
    FeedbackIn,
    FeedbackOut,
    FeedbackPatch,
    Instant,
    InterestIn,
    InterestOut,
    InterestPatch,
    PurchaseIn,
    PurchaseOut,
    RowId,
    VisitIn,
    VisitOut,
)
from facecrm.crm import activity
from facecrm.crm.activity import Filters, Item

router = APIRouter(tags=["activity"], responses=PROBLEMS)


def filters(
    store_id: Annotated[str | None, Query(max_length=32)] = None,
    customer_id: Annotated[str | None, Query(max_length=32)] = None,
    since: Instant | None = None,
    until: Instant | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Filters:
    return Filters(store_id, customer_id, since, until, limit, offset)


FiltersDep = Annotated[Filters, Depends(filters)]


@router.get("/visits", response_model=list[VisitOut])
def list_visits(f: FiltersDep, session: SessionDep, principal: ActivityReader) -> list[VisitOut]:
    return [VisitOut.model_validate(v) for v in activity.visits(session, principal, f)]


@router.post("/visits", status_code=201, response_model=VisitOut)
def record_visit(body: VisitIn, session: SessionDep, principal: VisitWriter) -> VisitOut:
    visit = activity.record_visit(
        session, principal, body.customer_id, body.store_id, body.source, body.similarity, body.at
    )
    return VisitOut.model_validate(visit)


@router.get("/purchases", response_model=list[PurchaseOut])
def list_purchases(
    f: FiltersDep, session: SessionDep, principal: ActivityReader
) -> list[PurchaseOut]:
    return [PurchaseOut.model_validate(p) for p in activity.purchases(session, principal, f)]


@router.post("/customers/{customer_id}/purchases", status_code=201, response_model=PurchaseOut)
def add_purchase(
    customer_id: str, body: PurchaseIn, session: SessionDep, principal: PurchaseWriter
) -> PurchaseOut:
    items = [Item(i.sku, i.name, i.quantity, i.unit_price_cents) for i in body.items]
    purchase = activity.add_purchase(
        session, principal, customer_id, body.store_id, items, body.currency, body.at
    )
    return PurchaseOut.model_validate(purchase)


@router.get("/interests", response_model=list[InterestOut])
def list_interests(
    f: FiltersDep, session: SessionDep, principal: ActivityReader, open_only: bool = False
) -> list[InterestOut]:
    found = activity.interests(session, principal, f, open_only)
    return [InterestOut.model_validate(i) for i in found]


@router.post("/customers/{customer_id}/interests", status_code=201, response_model=InterestOut)
def add_interest(
    customer_id: str, body: InterestIn, session: SessionDep, principal: ActivityWriter
) -> InterestOut:
    interest = activity.add_interest(
        session, principal, customer_id, body.store_id, body.product, body.sku, body.out_of_stock
    )
    return InterestOut.model_validate(interest)


@router.patch("/interests/{interest_id}", response_model=InterestOut)
def update_interest(
    interest_id: RowId, body: InterestPatch, session: SessionDep, principal: ActivityWriter
) -> InterestOut:
    interest = activity.update_interest(
        session, principal, interest_id, body.resolved, body.out_of_stock
    )
    return InterestOut.model_validate(interest)


@router.get("/feedback", response_model=list[FeedbackOut])
def list_feedback(
    f: FiltersDep, session: SessionDep, principal: ActivityReader, open_only: bool = False
) -> list[FeedbackOut]:
    found = activity.feedback(session, principal, f, open_only)
    return [FeedbackOut.model_validate(x) for x in found]


@router.post("/customers/{customer_id}/feedback", status_code=201, response_model=FeedbackOut)
def add_feedback(
    customer_id: str, body: FeedbackIn, session: SessionDep, principal: ActivityWriter
) -> FeedbackOut:
    item = activity.add_feedback(
        session, principal, customer_id, body.store_id, body.text, body.rating
    )
    return FeedbackOut.model_validate(item)


@router.patch("/feedback/{feedback_id}", response_model=FeedbackOut)
def update_feedback(
    feedback_id: RowId, body: FeedbackPatch, session: SessionDep, principal: ActivityWriter
) -> FeedbackOut:
    item = activity.resolve_feedback(session, principal, feedback_id, body.resolved)
    return FeedbackOut.model_validate(item)
