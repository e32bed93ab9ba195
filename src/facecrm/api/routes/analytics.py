"""Store agents' anonymous analytics: their settings, checkout queue alerts, hourly aggregates.

Routes only translate: the rules live in `crm.analytics`. The store is always the
device's own, never one named in a body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictFloat, StrictInt

from facecrm.api.deps import AlertsDep, CrmDep, SessionDep, StoreAgent
from facecrm.api.schemas import PROBLEMS, AlertOut, Moment
from facecrm.crm import analytics

router = APIRouter(tags=["store agents and alerts"], responses=PROBLEMS)
Name = Annotated[str, Field(min_length=1, max_length=20)]


class AgentAnalyticsOut(BaseModel):
    zones: dict[str, list[dict[str, Any]]]  # camera (masked name) -> [{name, points}]
    demographics_enabled: bool
    sentiment_enabled: bool
    checkout_queue: dict[str, Any]  # the store's rule: enabled, wait_minutes, ...


class QueueAlertIn(BaseModel):
    camera: str = Field(min_length=1, max_length=100)
    zone: Name
    trigger: Literal["unhappy", "length"]
    queue_length: StrictInt = Field(ge=0, le=1000)
    waiting_seconds: StrictFloat = Field(ge=0, le=86400)
    unhappy_seconds: StrictFloat = Field(ge=0, le=86400)
    confidence: StrictFloat = Field(ge=0, le=1)
    customer_id: str | None = Field(default=None, max_length=32)


class AggregateIn(BaseModel):
    hour: Moment
    zone: Name
    metric: Name
    bucket: Name
    count: StrictInt = Field(ge=0, le=analytics.MAX_COUNT)


class AggregatesIn(BaseModel):
    rows: list[AggregateIn] = Field(max_length=analytics.MAX_ROWS)


class AggregatesOut(BaseModel):
    stored: int


@router.get("/agent/analytics", response_model=AgentAnalyticsOut)
def agent_analytics(session: SessionDep, principal: StoreAgent) -> AgentAnalyticsOut:
    """Zones, switches and the checkout queue rule of the device's store."""
    return AgentAnalyticsOut.model_validate(analytics.agent_settings(session, principal))


@router.post("/agent/queue-alerts", status_code=201, response_model=AlertOut)
def agent_queue_alert(body: QueueAlertIn, alerts: AlertsDep, principal: StoreAgent) -> AlertOut:
    """A checkout queue alert (kind `queue`): no face, no identity unless the customer
    consented to `experience_analytics`."""
    report = analytics.QueueReport(**body.model_dump())
    return AlertOut.model_validate(analytics.queue_alert(alerts, principal, report))


@router.post("/agent/aggregates", response_model=AggregatesOut)
def agent_aggregates(body: AggregatesIn, crm: CrmDep, principal: StoreAgent) -> AggregatesOut:
    """Hourly k-anonymous counters; one bad row refuses the whole body (422, its reason)."""
    rows = [analytics.AggregateRow(**r.model_dump()) for r in body.rows]
    return AggregatesOut(stored=analytics.ingest(crm.sessions, principal, rows))
