"""Store agents (gallery sync, visit events), live alerts, shifts and store rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictFloat, ValidationError

from facecrm.alerts.bus import AlertBus
from facecrm.alerts.rules import RuleSettings
from facecrm.alerts.service import AlertService, VisitEvent
from facecrm.api.deps import allow, api_key, get_crm, oauth2, still_valid
from facecrm.api.schemas import Moment, RowId
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
    at: Moment  # a future one is "rejected" (crm.activity.check_time)
    camera: str = Field(default="", max_length=100)
    similarity: StrictFloat = Field(ge=-1, le=1)


class EventsIn(BaseModel):
    """A batch; each item is checked on its own (see `EventIn`) so one bad item is
    rejected alone instead of failing, and so stalling, the whole batch."""

    events: list[Any] = Field(max_length=500)


class EventsOut(BaseModel):
    outcomes: list[str]  # per event: visit, same_visit, duplicate, ignored or rejected
    errors: list[dict[str, Any]]  # per rejected event: index, loc, msg, type (never the input)


class StoreConfigIn(BaseModel):
    rules: RuleSettings = RuleSettings()
    webhook_url: str | None = Field(default=None, max_length=500)
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=100)


def _event(raw: object) -> VisitEvent | list[dict[str, Any]]:
    """The event, or what is wrong with it (locations and messages, not the values)."""
    try:
        e = EventIn.model_validate(raw)
    except ValidationError as exc:
        return [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in exc.errors()]
    return VisitEvent(e.key, e.customer_id, e.at, e.camera, e.similarity)


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
) -> EventsOut:
    """Visit events in the agent's order; each key is applied once; a malformed event is
    reported as rejected and the others are still applied."""
    parsed = [_event(raw) for raw in body.events]
    events = [p if isinstance(p, VisitEvent) else None for p in parsed]
    errors = [
        {"index": i, **error}
        for i, p in enumerate(parsed)
        if not isinstance(p, VisitEvent)
        for error in p
    ]
    return EventsOut(outcomes=alerts.ingest(principal, events), errors=errors)


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
    # a refused webhook URL is an InvalidError: 422 with its `reason` (api.problems)
    return alerts.configure_store(
        principal, store_id, body.rules, body.webhook_url, body.webhook_secret
    )
