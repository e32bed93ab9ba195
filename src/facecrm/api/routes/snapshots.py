"""Camera snapshots for drawing zones: staff ask, the store's agent uploads, staff read once.

Routes only translate; the rules (who, which camera, once, `TTL_SECONDS`, memory only) are
in `crm.snapshots`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from facecrm.api.deps import DeviceManager, SessionDep, StoreAgent
from facecrm.api.problems import ApiError
from facecrm.api.schemas import PROBLEMS
from facecrm.crm import snapshots

router = APIRouter(tags=["store agents and alerts"], responses=PROBLEMS)
Camera = Annotated[str, Query(min_length=1, max_length=100)]
SNAPSHOT_HEADER = "X-Facecrm-Snapshot"  # on `/agent/sync`: a camera waits for a picture


def get_snapshots(request: Request) -> snapshots.Snapshots:
    return request.app.state.snapshots  # type: ignore[no-any-return]


SnapshotsDep = Annotated[snapshots.Snapshots, Depends(get_snapshots)]


class SnapshotIn(BaseModel):
    camera: str = Field(min_length=1, max_length=100)  # the agent's masked name


class SnapshotRequestOut(BaseModel):
    camera: str
    expires_in: float  # seconds: the picture is gone after that, read or not


class SnapshotStatusOut(BaseModel):
    status: snapshots.Status


class PendingOut(BaseModel):
    cameras: list[str]


@router.post("/stores/{store_id}/snapshots", status_code=202, response_model=SnapshotRequestOut)
def request_snapshot(
    store_id: str, body: SnapshotIn, shots: SnapshotsDep, principal: DeviceManager
) -> SnapshotRequestOut:
    """Ask the store's agent for one picture of a camera (to draw zones on); audited."""
    shots.request(principal, store_id, body.camera)
    return SnapshotRequestOut(camera=body.camera, expires_in=snapshots.TTL_SECONDS)


@router.get("/stores/{store_id}/snapshots/status", response_model=SnapshotStatusOut)
def snapshot_status(
    store_id: str,
    camera: Camera,
    session: SessionDep,
    shots: SnapshotsDep,
    principal: DeviceManager,
) -> SnapshotStatusOut:
    """pending, ready or none (never the picture: polling it is free of side effects)."""
    return SnapshotStatusOut(status=shots.status(session, principal, store_id, camera))


@router.get(
    "/stores/{store_id}/snapshots",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def take_snapshot(
    store_id: str, camera: Camera, shots: SnapshotsDep, principal: DeviceManager
) -> Response:
    """The picture, once (it is discarded as it is sent); audited."""
    return Response(shots.take(principal, store_id, camera), media_type="image/jpeg")


@router.get("/agent/snapshots", response_model=PendingOut)
def agent_pending(shots: SnapshotsDep, principal: StoreAgent) -> PendingOut:
    """The cameras of the device's store waiting for a picture."""
    return PendingOut(cameras=shots.pending(principal))


@router.put(
    "/agent/snapshots",
    status_code=204,
    openapi_extra={"requestBody": {"content": {"image/jpeg": {}}, "required": True}},
)
async def agent_upload(
    request: Request, camera: Camera, shots: SnapshotsDep, principal: StoreAgent
) -> Response:
    """One JPEG of a requested camera (body: the image); 409 `not_requested` otherwise."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > snapshots.MAX_JPEG:
        raise ApiError(413, f"a snapshot is at most {snapshots.MAX_JPEG} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > snapshots.MAX_JPEG:
            raise ApiError(413, f"a snapshot is at most {snapshots.MAX_JPEG} bytes")
    await run_in_threadpool(shots.upload, principal, camera, bytes(data))
    return Response(status_code=204)
