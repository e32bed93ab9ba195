"""Store agents (gallery sync, visit events), live alerts, shifts and store rules."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StrictFloat, ValidationError

from facecrm.alerts.bus import AlertBus
from facecrm.alerts.cameras import CameraHealthService, CameraReport
from facecrm.alerts.rules import RuleSettings
from facecrm.alerts.service import VisitEvent
from facecrm.api.deps import (
    AlertHandler,
    AlertsDep,
    CrmDep,
    DeviceManager,
    KeyDep,
    SessionDep,
    StoreAgent,
    TokenDep,
    still_valid,
)
from facecrm.api.problems import ApiError
from facecrm.api.schemas import (
    PROBLEMS,
    AcknowledgedOut,
    AlertOut,
    CameraOut,
    DecideOut,
    EventStreamResponse,
    GalleryOut,
    Moment,
    RowId,
    ShiftOut,
    StoreConfigOut,
    SyncModelOut,
    SyncPageOut,
)
from facecrm.crm import accounts, readiness
from facecrm.crm.authz import Principal
from facecrm.crm.sync import PAGE_MAX

router = APIRouter(tags=["store agents and alerts"], responses=PROBLEMS)
RECHECK_SECONDS = 5.0  # how soon a revoked principal's open alert stream is closed
Outcome = Literal["visit", "same_visit", "duplicate", "ignored", "rejected"]


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


class EventErrorOut(BaseModel):
    """What is wrong with a rejected event: where and what, never the input itself."""

    index: int
    loc: list[str | int]
    msg: str
    type: str


class EventsOut(BaseModel):
    outcomes: list[Outcome]  # per event, in the order sent
    errors: list[EventErrorOut]  # per rejected event


class CameraIn(BaseModel):
    camera: str = Field(min_length=1, max_length=100)  # the agent's masked name
    last_frame_at: Moment | None = None  # None: no frame since the agent started


class HeartbeatIn(BaseModel):
    """An agent's periodic report: its cameras' last frame times and its own state (the
    devices page shows the version and outbox depth; left out: unchanged)."""

    version: str | None = Field(default=None, max_length=40, pattern=r"^[!-~][ -~]*$")
    queue_depth: int | None = Field(default=None, ge=0, lt=2**31)
    cameras: list[CameraIn] = Field(default_factory=list, max_length=64)


def get_cameras(request: Request) -> CameraHealthService:
    return request.app.state.cameras  # type: ignore[no-any-return]


CamerasDep = Annotated[CameraHealthService, Depends(get_cameras)]


class StoreConfigIn(BaseModel):
    rules: RuleSettings = RuleSettings()
    webhook_url: str | None = Field(default=None, max_length=500)
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=100)
    # IANA name (Europe/Paris): alerts show the store's local time; left out: unchanged
    time_zone: str | None = Field(default=None, min_length=1, max_length=64)


def _event(raw: object) -> VisitEvent | list[dict[str, Any]]:
    """The event, or what is wrong with it (locations and messages, not the values)."""
    try:
        e = EventIn.model_validate(raw)
    except ValidationError as exc:
        return [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in exc.errors()]
    return VisitEvent(e.key, e.customer_id, e.at, e.camera, e.similarity)


@router.get(
    "/agent/gallery",
    response_model=GalleryOut,
    responses={304: {"description": "unchanged since the ETag sent as If-None-Match"}},
)
def agent_gallery(
    crm: CrmDep,
    session: SessionDep,
    principal: StoreAgent,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Templates of opted-in customers for local decisions; 304 while unchanged. For agents
    from before incremental sync: the whole gallery at every change (see `/agent/sync`)."""
    store_id = None if principal.stores is None else accounts.device_store(principal)
    paused = not readiness.allows_recognition(session, crm.settings, store_id)
    version = f"{crm.model_id}-{crm.generation(session)}-{crm.runtime.decision_version}"
    etag = f'"{version}{"-paused" if paused else ""}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    body = crm.gallery_export(principal=principal)
    return Response(json.dumps(body), media_type="application/json", headers={"ETag": etag})


@router.get(
    "/agent/sync",
    response_model=SyncPageOut,
    responses={410: {**PROBLEMS[409], "description": "sync in full (reason full_resync_required)"}},
)
def agent_sync(
    crm: CrmDep,
    principal: StoreAgent,
    request: Request,
    response: Response,
    cursor: Annotated[str | None, Query(min_length=14, max_length=60)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 5000,
) -> SyncPageOut:
    """The gallery changes since `cursor` (none: a full sync), a page at a time; 410
    `full_resync_required` when the cursor predates the log or the decision rule changed."""
    page = crm.sync.page(principal, cursor, limit)
    if request.app.state.snapshots.flagged(principal):  # issue 13: staff asked for a picture
        response.headers["X-Facecrm-Snapshot"] = "requested"
    return SyncPageOut(
        mode=page.mode,
        cursor=page.cursor,
        more=page.more,
        reset=page.reset,
        rule=page.rule,
        removed=page.removed,
        models={m: SyncModelOut.model_validate(p.wire()) for m, p in page.models.items()},
    )


TEMPLATE_B64 = 4 * 4096 * 4 // 3 + 4  # a float32 vector of up to 4,096 values, in base64


class DecideIn(BaseModel):
    """A track's mean template(s), base64 of little-endian float32; never an image."""

    model_id: str = Field(max_length=64)
    template: str = Field(min_length=4, max_length=TEMPLATE_B64)
    second: str | None = Field(default=None, min_length=4, max_length=TEMPLATE_B64)


def _vector(raw: str) -> npt.NDArray[np.float32]:
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "a template must be base64", reason="bad_template") from None
    if not data or len(data) % 4:
        raise ApiError(422, "a template is whole float32 values", reason="bad_template")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


@router.post("/agent/decide", response_model=DecideOut)
def agent_decide(body: DecideIn, request: Request, crm: CrmDep, principal: StoreAgent) -> DecideOut:
    """Server-side decision for agents that do not hold (all) the templates: known or
    unknown by the same rule as a local decision. An unknown leaves nothing on the server."""
    if body.model_id != crm.model_id:
        raise ApiError(409, "the server runs another model; sync in full", reason="model_mismatch")
    if not request.app.state.decide_limiter.allow(principal.id):
        raise ApiError(429, "too many decisions; wait a minute", reason="rate_limited")
    second = None if body.second is None else _vector(body.second)
    match = crm.sync.decide(principal, _vector(body.template), second)
    if match is None:
        return DecideOut(known=False)
    return DecideOut(known=True, customer_id=match[0], similarity=round(match[1], 4))


@router.post("/agent/events", response_model=EventsOut)
def agent_events(body: EventsIn, alerts: AlertsDep, principal: StoreAgent) -> EventsOut:
    """Visit events in the agent's order; each key is applied once; a malformed event is
    reported as rejected and the others are still applied."""
    parsed = [_event(raw) for raw in body.events]
    events = [p if isinstance(p, VisitEvent) else None for p in parsed]
    errors = [
        EventErrorOut(index=i, **error)
        for i, p in enumerate(parsed)
        if not isinstance(p, VisitEvent)
        for error in p
    ]
    outcomes: list[Any] = alerts.ingest(principal, events)
    return EventsOut(outcomes=outcomes, errors=errors)


@router.post("/agent/heartbeat", response_model=list[CameraOut])
def agent_heartbeat(
    body: HeartbeatIn, cameras: CamerasDep, principal: StoreAgent
) -> list[CameraOut]:
    """Each camera's last frame time, and the agent's version and outbox depth; the server
    raises `camera_silent` for the store's managers when one stays silent longer than the
    store's `camera_silent.minutes`."""
    reports = [CameraReport(c.camera, c.last_frame_at) for c in body.cameras]
    views = cameras.heartbeat(
        principal, reports, version=body.version, queue_depth=body.queue_depth
    )
    return [CameraOut.model_validate(v) for v in views]


@router.get("/stores/{store_id}/cameras", response_model=list[CameraOut])
def store_cameras(store_id: str, cameras: CamerasDep, principal: DeviceManager) -> list[CameraOut]:
    """The store's agent cameras: last frame time and whether a silence alert is open."""
    return [CameraOut.model_validate(v) for v in cameras.cameras(principal, store_id)]


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(alerts: AlertsDep, principal: AlertHandler) -> list[AlertOut]:
    return [AlertOut.model_validate(a) for a in alerts.open_alerts(principal)]


@router.get("/alerts/history", response_model=list[AlertOut])
def alert_history(
    alerts: AlertsDep,
    principal: AlertHandler,
    store_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[AlertOut]:
    """Greeted, dismissed and disputed alerts of the caller's stores, last closed first."""
    found = alerts.history(principal, store_id, limit, offset)
    return [AlertOut.model_validate(a) for a in found]


@router.post("/alerts/{alert_id}/dismiss", response_model=AlertOut)
def dismiss_alert(alert_id: RowId, alerts: AlertsDep, principal: AlertHandler) -> AlertOut:
    return AlertOut.model_validate(alerts.dismiss(principal, alert_id))


@router.post("/alerts/{alert_id}/dispute", response_model=AlertOut)
def dispute_alert(alert_id: RowId, alerts: AlertsDep, principal: AlertHandler) -> AlertOut:
    """ "Not this person": closes the alert, disputes the visit, feeds the dispute report."""
    return AlertOut.model_validate(alerts.dispute(principal, alert_id))


@router.post("/alerts/{alert_id}/claim", response_model=AlertOut)
def claim_alert(alert_id: RowId, alerts: AlertsDep, principal: AlertHandler) -> AlertOut:
    return AlertOut.model_validate(alerts.claim(principal, alert_id))


@router.post("/alerts/{alert_id}/ack", response_model=AcknowledgedOut)
def acknowledge_alert(
    alert_id: RowId, alerts: AlertsDep, principal: AlertHandler
) -> AcknowledgedOut:
    return AcknowledgedOut.model_validate(alerts.acknowledge(principal, alert_id))


def sse(
    bus: AlertBus,
    principal: Principal,
    request: Request,
    alive: Callable[[], bool] | None = None,
    recheck_seconds: float = RECHECK_SECONDS,
) -> EventStreamResponse:
    """Server-sent events of the principal's stores' alerts, with keep-alives.

    `alive` re-checks the credentials the stream was opened with every
    `recheck_seconds`: a disabled user, a changed password, a log-out or a
    revoked device closes the stream instead of leaving it open for hours. The wait
    for the next alert ends at the next check's time, so a busy store's alerts never
    push a check back (they did: each alert restarted a full wait).
    """

    async def stream() -> AsyncIterator[str]:
        sub = bus.subscribe(principal.stores)
        checked = time.monotonic()
        try:
            yield "retry: 2000\n: connected\n\n"
            while not await request.is_disconnected():
                wait = recheck_seconds
                if alive is not None:
                    wait = checked + recheck_seconds - time.monotonic()
                    if wait <= 0:
                        if not await run_in_threadpool(alive):
                            yield 'event: end\ndata: {"reason": "credentials revoked"}\n\n'
                            return
                        checked = time.monotonic()
                        wait = recheck_seconds
                try:
                    payload = await asyncio.wait_for(sub.queue.get(), timeout=wait)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                roles = payload.get("roles")  # e.g. camera alerts: the store's managers only
                if isinstance(roles, list) and principal.role not in roles:
                    continue
                yield f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
        finally:
            bus.unsubscribe(sub)

    return EventStreamResponse(
        stream(),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/alerts/stream", response_class=EventStreamResponse)
def alert_stream(
    request: Request, alerts: AlertsDep, principal: AlertHandler, token: TokenDep, key: KeyDep
) -> EventStreamResponse:
    """Live alerts of the caller's stores (server-sent events); holds no database session."""
    alive = still_valid(alerts.crm, principal, token=token, key=key)
    return sse(alerts.bus, principal, request, alive)


@router.post("/shifts/{store_id}", status_code=201, response_model=ShiftOut)
def start_shift(store_id: str, alerts: AlertsDep, principal: AlertHandler) -> ShiftOut:
    """The calling staff member is on shift in this store (alerts may be routed to them)."""
    return ShiftOut.model_validate(alerts.start_shift(principal, store_id))


@router.delete("/shifts/{store_id}", status_code=204)
def end_shift(store_id: str, alerts: AlertsDep, principal: AlertHandler) -> Response:
    alerts.end_shift(principal, store_id)
    return Response(status_code=204)


@router.put(
    "/stores/{store_id}/config", response_model=StoreConfigOut, response_model_exclude_unset=True
)
def configure_store(
    store_id: str, body: StoreConfigIn, alerts: AlertsDep, principal: DeviceManager
) -> StoreConfigOut:
    """Switch rules on or off, tune them, and set the store's signed webhook.

    The answer's `rules` holds the overrides that were set (the defaults apply to the rest).
    """
    # a refused webhook URL is an InvalidError: 422 with its `reason` (api.problems)
    view = alerts.configure_store(
        principal, store_id, body.rules, body.webhook_url, body.webhook_secret, body.time_zone
    )
    return StoreConfigOut.model_validate(view)
