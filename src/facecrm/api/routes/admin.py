"""Stores, staff accounts and devices.

Staff routes are open to administrators and managers; which accounts a manager may see
and change (associates of their own stores) is decided in `crm.accounts`, not here.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from facecrm.api.deps import (
    DeviceManager,
    SessionDep,
    StaffManager,
    StaffWriter,
    StoresReader,
    StoresWriter,
)
from facecrm.api.schemas import (
    PROBLEMS,
    DeviceIn,
    DeviceOut,
    NewDeviceOut,
    PasswordIn,
    StaffIn,
    StaffOut,
    StaffStatusOut,
    StoreIn,
    StoreOut,
    StoresIn,
    UnlockedOut,
)
from facecrm.crm import accounts
from facecrm.crm.models import StaffUser

router = APIRouter(tags=["admin"], responses=PROBLEMS)


@router.get("/stores", response_model=list[StoreOut])
def list_stores(session: SessionDep, principal: StoresReader) -> list[StoreOut]:
    return [StoreOut.model_validate(s) for s in accounts.list_stores(session, principal)]


@router.post("/stores", response_model=StoreOut, status_code=201)
def create_store(body: StoreIn, session: SessionDep, principal: StoresWriter) -> StoreOut:
    return StoreOut.model_validate(accounts.create_store(session, body.code, body.name, principal))


def staff_out(user: StaffUser) -> StaffOut:
    return StaffOut(
        id=user.id,
        username=user.username,
        role=user.role,
        store_ids=[s.id for s in user.stores],
        display_name=user.display_name,
        active=user.active,
    )


@router.get("/staff", response_model=list[StaffStatusOut])
def list_staff(
    request: Request, session: SessionDep, principal: StaffManager
) -> list[StaffStatusOut]:
    """The accounts the caller may see (a manager: those sharing one of their stores),
    with each one's log-in lock and whether the caller may change it."""
    guard = request.app.state.login_guard
    views = accounts.staff_views(session, principal, guard)
    return [StaffStatusOut.model_validate(v) for v in views]


@router.post("/staff", response_model=StaffOut, status_code=201)
def create_staff(body: StaffIn, session: SessionDep, principal: StaffManager) -> StaffOut:
    """A new account; a manager creates associates of their own stores only."""
    user = accounts.create_staff(
        session,
        body.username,
        body.password,
        body.role,
        body.store_ids,
        body.display_name,
        principal=principal,
    )
    return staff_out(user)


@router.post("/staff/{staff_id}/disable", status_code=204)
def disable_staff(staff_id: str, session: SessionDep, principal: StaffManager) -> Response:
    """Disable an account: its tokens, console sessions and live streams stop at once."""
    accounts.set_active(session, principal, staff_id, active=False)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/enable", status_code=204)
def enable_staff(staff_id: str, session: SessionDep, principal: StaffManager) -> Response:
    """Enable a disabled account again (the user logs in anew: old tokens stay void)."""
    accounts.set_active(session, principal, staff_id, active=True)
    return Response(status_code=204)


@router.post("/staff/{staff_id}/password", status_code=204)
def set_password(
    staff_id: str, body: PasswordIn, session: SessionDep, principal: StaffManager
) -> Response:
    """Set a new password (a reset); every token issued before stops working."""
    accounts.set_password(session, principal, staff_id, body.password)
    return Response(status_code=204)


@router.put("/staff/{staff_id}/stores", response_model=StaffOut)
def assign_stores(
    staff_id: str, body: StoresIn, session: SessionDep, principal: StaffManager
) -> StaffOut:
    """Set the stores the account works in; a store taken away ends its sessions."""
    return staff_out(accounts.assign_stores(session, principal, staff_id, body.store_ids))


@router.post("/staff/{staff_id}/unlock", response_model=UnlockedOut)
def unlock_staff(
    request: Request, staff_id: str, session: SessionDep, principal: StaffManager
) -> UnlockedOut:
    """End the account's log-in back-off after too many wrong passwords."""
    guard = request.app.state.login_guard
    was_locked = accounts.unlock(session, principal, guard, staff_id)
    return UnlockedOut(
        username=accounts.find_staff(session, staff_id).username, was_locked=was_locked
    )


@router.delete("/staff/{staff_id}", status_code=204)
def delete_staff(staff_id: str, session: SessionDep, principal: StaffWriter) -> Response:
    """Delete an account (the audit trail keeps its name)."""
    accounts.delete_staff(session, principal, staff_id)
    return Response(status_code=204)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(session: SessionDep, principal: DeviceManager) -> list[DeviceOut]:
    """The devices of the caller's stores, with when each was last seen and what its agent
    last reported (version, outbox depth)."""
    return [DeviceOut.model_validate(d) for d in accounts.device_views(session, principal)]


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


@router.post("/devices/{device_id}/rotate", response_model=NewDeviceOut)
def rotate_device_key(
    device_id: str, session: SessionDep, principal: DeviceManager
) -> NewDeviceOut:
    """A new API key for the device, shown only in this response; the old key is refused
    from now on (install the new one on the device)."""
    device, key = accounts.rotate_device_key(session, principal, device_id)
    return NewDeviceOut(**DeviceOut.model_validate(device).model_dump(), api_key=key)
