"""Kiosk devices: a `kiosk` device's key opens a kiosk session on the console.

The session is a signed cookie naming the device and a tag of its key hash, so revoking
the device or rotating its key ends every kiosk session at its next request. The kiosk's
principal may only enroll (`authz.GRANTS[kiosk]`) and its key opens nothing in the API.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from facecrm.crm import accounts, audit
from facecrm.crm.authz import Principal
from facecrm.crm.errors import LoginFailedError
from facecrm.crm.models import Device, DeviceKind

TAG_LENGTH = 16  # hex characters of the key hash carried in the session


def open_session(session: Session, key: str) -> tuple[Principal, str]:
    """The kiosk principal and key tag of a valid kiosk key; audited (`kiosk_login`).

    Any other key (unknown, revoked, or an agent's or till's) is `LoginFailedError`.
    """
    device = accounts.device_for_key(session, key)
    if device is None or device.kind != DeviceKind.KIOSK:
        raise LoginFailedError
    principal = accounts.device_principal(device)
    audit.record(session, principal, "kiosk_login", None, device.store_id)
    return principal, device.key_hash[:TAG_LENGTH]


def principal_for(session: Session, device_id: str, tag: str) -> Principal | None:
    """The kiosk principal of a session, while its device is a live kiosk with that key."""
    device = session.get(Device, device_id)
    if device is None or device.revoked_at is not None or device.kind != DeviceKind.KIOSK:
        return None
    if device.key_hash[:TAG_LENGTH] != tag:
        return None
    return accounts.device_principal(device)
