"""Device sessions on the console: a `kiosk` or `pos` device's key opens its one screen.

A kiosk's key opens the enrollment screen (`web.kiosk`), a till's key the face-checkout
screen (`web.till`). The session is a signed cookie naming the device and a tag of its key
hash, so revoking the device or rotating its key ends every session at its next request.
A kiosk's principal may only enroll (`authz.GRANTS[kiosk]`) and its key opens nothing in
the API; a till's session opens the payment routes only (`api.device_session`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from facecrm.crm import accounts, audit
from facecrm.crm.authz import Principal
from facecrm.crm.errors import LoginFailedError
from facecrm.crm.models import Device, DeviceKind

TAG_LENGTH = 16  # hex characters of the key hash carried in the session
# the audit action of a session's start, per kind of device that may open one
LOGIN_ACTIONS = {DeviceKind.KIOSK: "kiosk_login", DeviceKind.POS: "till_login"}


def open_session(
    session: Session, key: str, kind: DeviceKind = DeviceKind.KIOSK
) -> tuple[Principal, str]:
    """The principal and key tag of a valid key of a `kind` device; audited (`kiosk_login`,
    `till_login`).

    Any other key (unknown, revoked, or another kind's) is `LoginFailedError`.
    """
    device = accounts.device_for_key(session, key)
    if device is None or device.kind != kind:
        raise LoginFailedError
    principal = accounts.device_principal(device)
    audit.record(session, principal, LOGIN_ACTIONS[kind], None, device.store_id)
    return principal, device.key_hash[:TAG_LENGTH]


def principal_for(
    session: Session, device_id: str, tag: str, kind: DeviceKind = DeviceKind.KIOSK
) -> Principal | None:
    """The principal of a session, while its device is a live `kind` device with that key."""
    device = session.get(Device, device_id)
    if device is None or device.revoked_at is not None or device.kind != kind:
        return None
    if device.key_hash[:TAG_LENGTH] != tag:
        return None
    return accounts.device_principal(device)
