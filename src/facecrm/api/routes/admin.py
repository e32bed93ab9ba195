"""Stores, staff accounts and devices."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from facecrm.api.deps import allow, get_crm
from facecrm.api.schemas import (
    DeviceIn,
    DeviceOut,
    NewDeviceOut,
    StaffIn,
    StaffOut,
    StoreIn,
    StoreOut,
)
from facecrm.crm import accounts, audit, db
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
        store = accounts.create_store(session, body.code, body.name)
        audit.record(session, principal, "store_create", None, store.id)
        return StoreOut(id=store.id, code=store.code, name=store.name)


@router.post("/staff", response_model=StaffOut, status_code=201)
def create_staff(
    body: StaffIn,
    crm: FaceCRM = Depends(get_crm),
    principal: Principal = Depends(allow(Permission.STAFF_WRITE)),
) -> StaffOut:
    with db.transaction(crm.sessions) as session:
        user = accounts.create_staff(
            session, body.username, body.password, body.role, body.store_ids, body.display_name
        )
        audit.record(session, principal, "staff_create", username=user.username, role=user.role)
        return StaffOut(
            id=user.id,
            username=user.username,
            role=user.role,
            store_ids=[s.id for s in user.stores],
        )


def _device(device: Device) -> DeviceOut:
    return DeviceOut(
        id=device.id,
        store_id=device.store_id,
        kind=device.kind,
        name=device.name,
        created_at=device.created_at,
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
        device, key = accounts.create_device(session, body.store_id, body.kind, body.name)
        audit.record(session, principal, "device_create", None, body.store_id, kind=body.kind)
        return NewDeviceOut(**_device(device).model_dump(), api_key=key)
