"""Stores, staff accounts and devices."""

from __future__ import annotations

from fastapi import APIRouter, Response

from facecrm.api.deps import DeviceManager, SessionDep, StaffWriter, StoresReader, StoresWriter
from facecrm.api.schemas import (
    PROBLEMS,
    DeviceIn,
    DeviceOut,
    NewDeviceOut,
    PasswordIn,
    StaffIn,
    StaffOut,
    StoreIn,
    StoreOut,
)
from facecrm.crm import accounts

router = APIRouter(tags=["admin"], responses=PROBLEMS)


@router.get("/stores", response_model=list[StoreOut])
def list_stores(session: SessionDep, principal: StoresReader) -> list[StoreOut]:
    return [StoreOut.model_validate(s) for s in accounts.list_stores(session, principal)]


@router.post("/stores", response_model=StoreOut, status_code=201)
def create_store(body: StoreIn, session: SessionDep, principal: StoresWriter) -> StoreOut:
    return StoreOut.model_validate(accounts.create_store(session, body.code, body.name, principal))


@router.post("/staff", response_model=StaffOut, status_code=201)
def create_staff(body: StaffIn, session: SessionDep, principal: StaffWriter) -> StaffOut:
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
        id=user.id, username=user.username, role=user.role, store_ids=[s.id for s in user.stores]
    )


@router.post("/staff/{staff_id}/disable", status_code=204)
def disable_staff(staff_id: str, session: SessionDep, principal: StaffWriter) -> Response:
    """Disable an account: its tokens, console sessions and live streams stop at once."""
    accounts.set_active(session, principal, staff_id, active=False)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/enable", status_code=204)
def enable_staff(staff_id: str, session: SessionDep, principal: StaffWriter) -> Response:
    """Enable a disabled account again (the user logs in anew: old tokens stay void)."""
    accounts.set_active(session, principal, staff_id, active=True)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/password", status_code=204)
def set_password(
    staff_id: str, body: PasswordIn, session: SessionDep, principal: StaffWriter
) -> Response:
    """Set a new password; every token issued before stops working."""
    accounts.set_password(session, principal, staff_id, body.password)
    return Response(status_code=204)


@router.delete("/staff/{staff_id}", status_code=204)
def delete_staff(staff_id: str, session: SessionDep, principal: StaffWriter) -> Response:
    """Delete an account (the audit trail keeps its name)."""
    accounts.delete_staff(session, principal, staff_id)
    return Response(status_code=204)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(session: SessionDep, principal: DeviceManager) -> list[DeviceOut]:
    return [DeviceOut.model_validate(d) for d in accounts.list_devices(session, principal)]


@router.post("/devices", response_model=NewDeviceOut, status_code=201)
def create_device(body: DeviceIn, session: SessionDep, principal: DeviceManager) -> NewDeviceOut:
    """Register a store agent or POS; the response carries its API key, shown only once."""
    device, key = accounts.create_device(
        session, body.store_id, body.kind, body.name, principal=principal
    )
    return NewDeviceOut(**DeviceOut.model_validate(device).model_dump(), api_key=key)


@router.post("/devices/{device_id}/revoke", status_code=204)
def revoke_device(device_id: str, session: SessionDep, principal: DeviceManager) -> Response:
    """Revoke a device's key for good: its next request is refused (its visits stay)."""
    accounts.revoke_device(session, principal, device_id)
    return Response(status_code=204)
