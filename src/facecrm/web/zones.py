"""The console's zone editor (issue 13, item 1): draw a camera's zones on a snapshot.

The page asks the store's agent for one picture of a camera (`crm.snapshots`: memory only,
read once, gone after `TTL_SECONDS`), shows it under an SVG where the user clicks polygons,
and saves them with `alerts.storeconfig.set_zones`, the store config API's own rule: an
invalid polygon is the same 422 with its `reason`, shown on the page. Who may do any of it
(the store's managers and admins) is decided there; these routes only translate. The script
is `static/zones.js` (no inline script: CSP-clean); its requests carry the CSRF token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from facecrm.alerts import storeconfig, zones
from facecrm.api.deps import SessionDep
from facecrm.api.routes.snapshots import SnapshotsDep
from facecrm.api.schemas import StoreOut, ZonesIn
from facecrm.crm import accounts, snapshots
from facecrm.errors import FacecrmError
from facecrm.web.console import Staff, _json, check_csrf, render

router = APIRouter(prefix="/console", include_in_schema=False)
Camera = Annotated[str, Query(min_length=1, max_length=100)]
NAMES = ("entrance", "floor", "checkout_queue")


class CameraIn(BaseModel):
    camera: str = Field(min_length=1, max_length=100)


@router.get("/stores/{store_id}/zones", response_class=HTMLResponse)
def zones_page(request: Request, store_id: str, session: SessionDep, principal: Staff) -> Response:
    """The editor: the store's cameras and the zones they have now."""
    try:
        cameras = snapshots.cameras(session, principal, store_id)
        config = storeconfig.effective(session, principal, store_id)
        store = _json(StoreOut, accounts.get_store(session, store_id))
    except FacecrmError as exc:
        response = render(request, "zones.html", principal, error=str(exc.detail), store=None)
        response.status_code = exc.status
        return response
    return render(
        request,
        "zones.html",
        principal,
        store=store,
        cameras=cameras,
        zones=config.zones,
        names=NAMES,
        max_points=zones.MAX_POINTS,
        ttl=int(snapshots.TTL_SECONDS),
    )


@router.post("/stores/{store_id}/zones/snapshot", status_code=202)
def ask(
    request: Request, store_id: str, body: CameraIn, shots: SnapshotsDep, principal: Staff
) -> dict[str, Any]:
    check_csrf(request, request.headers.get("x-csrf-token"))
    shots.request(principal, store_id, body.camera)
    return {"camera": body.camera, "expires_in": snapshots.TTL_SECONDS}


@router.get("/stores/{store_id}/zones/snapshot/status")
def status(
    store_id: str, camera: Camera, session: SessionDep, shots: SnapshotsDep, principal: Staff
) -> dict[str, str]:
    return {"status": shots.status(session, principal, store_id, camera)}


@router.get("/stores/{store_id}/zones/snapshot")
def picture(store_id: str, camera: Camera, shots: SnapshotsDep, principal: Staff) -> Response:
    """The picture, once (the editor's background); a second read is a 404."""
    return Response(shots.take(principal, store_id, camera), media_type="image/jpeg")


@router.post("/stores/{store_id}/zones")
def save(
    request: Request, store_id: str, body: ZonesIn, session: SessionDep, principal: Staff
) -> dict[str, Any]:
    check_csrf(request, request.headers.get("x-csrf-token"))
    raw = [z.model_dump() for z in body.zones]
    config = storeconfig.set_zones(session, principal, store_id, body.camera, raw)
    return {"camera": body.camera, "zones": config.zones.get(body.camera, [])}
