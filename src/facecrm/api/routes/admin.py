"""Stores, staff accounts and devices."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from facecrm.api.deps import allow, get_crm
from facecrm.api.schemas import (
    DeviceIn,
    DeviceOut,
    NewDeviceOut,
    PasswordIn,
    StaffIn,
    StaffOut,
    StoreIn,
    StoreOut,
)
from facecrm.crm import accounts, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import Device
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["admin"])


@router.get("/stores", response_model=list[StoreOut])
def list_stores(
    crm: FaceCRM = Depends(get_crm), _: Principal = Depends(allow(Permission.STORES_READ))
) -> list[StoreOut]:
    with crm.sessions() as session:
        return [StoreOut(id=s.id, code=s.code, name=s.name) for s in accounts.list_stores(session)]


@router.post("/stores", response_model=StoreOut, status_code=201)
def create_store(
    body: StoreIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STORES_WRITE)),
) -> StoreOut:
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, body.code, body.name, principal)
        return StoreOut(id=store.id, code=store.code, name=store.name)


@router.post("/staff", response_model=StaffOut, status_code=201)
def create_staff(
    body: StaffIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> StaffOut:
    with db.transaction(crm.sessions) as session:
        user = accounts.create_staff(
            session,
            body.username,
            body.password,
            body.role,
            body.store_ids,
            body.display_name,
            principal=principal,
        )
        return StaffOut(
            id=user.id,
            username=user.username,
            role=user.role,
            store_ids=[s.id for s in user.stores],
        )


@router.post("/staff/{staff_id}/disable", status_code=204)
def disable_staff(
    staff_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> Response:
    """Disable an account: its tokens, console sessions and live streams stop at once."""
    with db.transaction(crm.sessions) as session:
        accounts.set_active(session, principal, staff_id, active=False)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/enable", status_code=204)
def enable_staff(
    staff_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> Response:
    """Enable a disabled account again (the user logs in anew: old tokens stay void)."""
    with db.transaction(crm.sessions) as session:
        accounts.set_active(session, principal, staff_id, active=True)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/password", status_code=204)
def set_password(
    staff_id: str,
    body: PasswordIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> Response:
    """Set a new password; every token issued before stops working."""
    with db.transaction(crm.sessions) as session:
        accounts.set_password(session, principal, staff_id, body.password)
    return Response(status_code=204)


@router.delete("/staff/{staff_id}", status_code=204)
def delete_staff(
    staff_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> Response:
    """Delete an account (the audit trail keeps its name)."""
    with db.transaction(crm.sessions) as session:
        accounts.delete_staff(session, principal, staff_id)
    return Response(status_code=204)


def _device(device: Device) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        store_id=device.store_id,
        kind=device.kind,
        name=device.name,
        created_at=device.created_at,
        revoked_at=device.revoked_at,
    )


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.DEVICES_MANAGE)),
) -> list[DeviceOut]:
    with crm.sessions() as session:
        return [_device(d) for d in accounts.list_devices(session, principal.visible_stores())]


@router.post("/devices", response_model=NewDeviceOut, status_code=201)
def create_device(
    body: DeviceIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.DEVICES_MANAGE)),
) -> NewDeviceOut:
    """Register a store agent or POS; the response carries its API key, shown only once."""
    principal.require_store(body.store_id)
    with db.transaction(crm.sessions) as session:
        device, key = accounts.create_device(
            session, body.store_id, body.kind, body.name, principal=principal
        )
        return NewDeviceOut(**_device(device).model_dump(), api_key=key)


@router.post("/devices/{device_id}/revoke", status_code=204)
def revoke_device(
    device_id: str,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.DEVICES_MANAGE)),
) -> Response:
    """Revoke a device's key for good: its next request is refused (its visits stay)."""
    with db.transaction(crm.sessions) as session:
        accounts.revoke_device(session, principal, device_id)
    return Response(status_code=204)
