"""Store agents (gallery sync, visit events), live alerts, shifts and store rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from facecrm.alerts.bus import AlertBus
from facecrm.alerts.service import AlertService, VisitEvent
from facecrm.api.deps import allow, api_key, get_crm, oauth2, still_valid
from facecrm.api.schemas import RowId
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["store agents and alerts"])
Agent = Depends(allow(Permission.AGENT))
Staff = Depends(allow(Permission.ALERTS))
RECHECK_SECONDS = 5.0  # how soon a revoked principal's open alert stream is closed


def get_alerts(request: Request) -> AlertService:
    return request.app.state.alerts  # type: ignore[no-any-return]


class EventIn(BaseModel):
    key: str = Field(min_length=8, max_length=80)
    type: str = Field(pattern="^visit$")
    customer_id: str = Field(max_length=32)
    at: datetime
    camera: str = Field(default="", max_length=100)
    similarity: float = Field(ge=-1, le=1)


class EventsIn(BaseModel):
    events: list[EventIn] = Field(max_length=500)


class StoreConfigIn(BaseModel):
    rules: dict[str, dict[str, Any]] = {}
    webhook_url: str | None = Field(default=None, max_length=500, pattern="^https?://")
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=100)


@router.get("/agent/gallery")
def agent_gallery(
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Agent,
    if_none_match: str | None = Header(default=None),
) -> Response:
    """Templates of opted-in customers for local decisions; 304 while unchanged."""
    with crm.sessions() as session:
        etag = f'"{crm.model_id}-{crm.generation(session)}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    body = crm.gallery_export(principal)
    return Response(json.dumps(body), media_type="application/json", headers={"ETag": etag})


@router.post("/agent/events")
def agent_events(
    body: EventsIn, alerts: AlertService = Depends(get_alerts), principal: Principal = Agent
) -> dict[str, list[str]]:
    """Visit events in the agent's order; each key is applied once."""
    events = [VisitEvent(e.key, e.customer_id, e.at, e.camera, e.similarity) for e in body.events]
    return {"outcomes": alerts.ingest(principal, events)}


@router.get("/alerts")
def list_alerts(
    alerts: AlertService = Depends(get_alerts), principal: Principal = Staff
) -> list[dict[str, object]]:
    return alerts.open_alerts(principal)


@router.post("/alerts/{alert_id}/claim")
def claim_alert(
    alert_id: RowId, alerts: AlertService = Depends(get_alerts), principal: Principal = Staff
) -> dict[str, object]:
    return alerts.claim(principal, alert_id)


@router.post("/alerts/{alert_id}/ack")
def acknowledge_alert(
    alert_id: RowId, alerts: AlertService = Depends(get_alerts), principal: Principal = Staff
) -> dict[str, object]:
    return alerts.acknowledge(principal, alert_id)


def sse(
    bus: AlertBus,
    principal: Principal,
    request: Request,
    alive: Callable[[], bool] | None = None,
    recheck_seconds: float = RECHECK_SECONDS,
) -> StreamingResponse:
    """Server-sent events of the principal's stores' alerts, with keep-alives.

    `alive` re-checks the credentials the stream was opened with every
    `recheck_seconds`: a disabled user, a changed password, a log-out or a
    revoked device closes the stream instead of leaving it open for hours.
    """

    async def stream() -> AsyncIterator[str]:
        sub = bus.subscribe(principal.stores)
        checked = time.monotonic()
        try:
            yield "retry: 2000\n: connected\n\n"
            while not await request.is_disconnected():
                if alive is not None and time.monotonic() - checked >= recheck_seconds:
                    if not await run_in_threadpool(alive):
                        yield 'event: end\ndata: {"reason": "credentials revoked"}\n\n'
                        return
                    checked = time.monotonic()
                try:
                    payload = await asyncio.wait_for(sub.queue.get(), timeout=recheck_seconds)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
        finally:
            bus.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/alerts/stream")
def alert_stream(
    request: Request,
    alerts: AlertService = Depends(get_alerts),
    principal: Principal = Staff,
    token: str | None = Depends(oauth2),
    key: str | None = Depends(api_key),
) -> StreamingResponse:
    alive = still_valid(alerts.crm, principal, token=token, key=key)
    return sse(alerts.bus, principal, request, alive)


@router.post("/shifts/{store_id}", status_code=201)
def start_shift(
    store_id: str, alerts: AlertService = Depends(get_alerts), principal: Principal = Staff
) -> dict[str, object]:
    """The calling staff member is on shift in this store (alerts may be routed to them)."""
    return alerts.start_shift(principal, store_id)


@router.delete("/shifts/{store_id}", status_code=204)
def end_shift(
    store_id: str, alerts: AlertService = Depends(get_alerts), principal: Principal = Staff
) -> Response:
    alerts.end_shift(principal, store_id)
    return Response(status_code=204)


@router.put("/stores/{store_id}/config")
def configure_store(
    store_id: str,
    body: StoreConfigIn,
    alerts: AlertService = Depends(get_alerts),
    principal: Principal = Depends(allow(Permission.DEVICES_MANAGE)),
) -> dict[str, object]:
    """Switch rules on or off, tune them, and set the store's signed webhook."""
    return alerts.configure_store(
        principal, store_id, body.rules, body.webhook_url, body.webhook_secret
    )
