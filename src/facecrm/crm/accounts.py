"""Stores, staff accounts and devices; password and API-key checks.

Staff passwords are hashed with Argon2id. Device API keys are 256-bit random
tokens shown once; only their SHA-256 is stored (a slow hash adds nothing for
keys with that much entropy, and lookups stay O(1)).
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from facecrm.crm.authz import Principal
from facecrm.crm.errors import ConflictError, InvalidError, NotFoundError
from facecrm.crm.models import Device, DeviceKind, Role, StaffUser, Store

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser")
DEVICE_KEY_PREFIX = "fcd_"
MIN_PASSWORD = 8


def check_password(password: str) -> None:
    """Refuse a password too short once surrounding blanks are ignored (all-blank included).

    Shared by account creation and password change, so both hold the same rule.
    """
    if len(password.strip()) < MIN_PASSWORD:
        raise InvalidError(
            f"the password must have at least {MIN_PASSWORD} characters besides spaces"
        )


def create_store(session: Session, code: str, name: str) -> Store:
    code, name = code.strip(), name.strip()
    if not code or not name:
        raise InvalidError("a store needs a code and a name")
    if session.scalar(select(Store).where(Store.code == code)) is not None:
        raise ConflictError(f"a store with code {code!r} exists")
    store = Store(code=code, name=name)
    session.add(store)
    session.flush()
    return store


def get_store(session: Session, store_id: str) -> Store:
    store = session.get(Store, store_id)
    if store is None:
        raise NotFoundError(f"no store with id {store_id!r}")
    return store


def list_stores(session: Session) -> list[Store]:
    return list(session.scalars(select(Store).order_by(Store.code)))


def create_staff(
    session: Session,
    username: str,
    password: str,
    role: str,
    store_ids: list[str] | None = None,
    display_name: str = "",
) -> StaffUser:
    username = username.strip()
    if not username:
        raise InvalidError("the username is empty")
    check_password(password)
    if role not in {r.value for r in Role}:
        raise InvalidError(f"unknown role {role!r}; use admin, manager, associate or auditor")
    if session.scalar(select(StaffUser).where(StaffUser.username == username)) is not None:
        raise ConflictError(f"the username {username!r} is taken")
    stores = [get_store(session, s) for s in store_ids or []]
    user = StaffUser(
        username=username,
        display_name=display_name or username,
        password_hash=_hasher.hash(password),
        role=role,
        stores=stores,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent insert of the same username
        raise ConflictError(f"the username {username!r} is taken") from exc
    return user


def authenticate(session: Session, username: str, password: str) -> StaffUser | None:
    """The active user with this password, else None (same work either way)."""
    user = session.scalar(
        select(StaffUser)
        .where(StaffUser.username == username)
        .options(selectinload(StaffUser.stores))
    )
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    return user


def staff_principal(user: StaffUser) -> Principal:
    chain_wide = user.role in {Role.ADMIN, Role.AUDITOR}
    stores = None if chain_wide else frozenset(s.id for s in user.stores)
    return Principal("staff", user.id, user.username, user.role, stores)


def create_device(session: Session, store_id: str, kind: str, name: str = "") -> tuple[Device, str]:
    """A new device and its API key (returned once, never stored)."""
    if kind not in {k.value for k in DeviceKind}:
        raise InvalidError(f"unknown device kind {kind!r}; use agent or pos")
    store = get_store(session, store_id)
    key = DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)
    device = Device(
        store_id=store.id, kind=kind, name=name or f"{kind} {store.code}", key_hash=hash_key(key)
    )
    session.add(device)
    session.flush()
    return device, key


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def device_for_key(session: Session, key: str) -> Device | None:
    device = session.scalar(select(Device).where(Device.key_hash == hash_key(key)))
    if device is None or device.revoked_at is not None:
        return None
    return device


def device_principal(device: Device) -> Principal:
    return Principal("device", device.id, device.name, device.kind, frozenset({device.store_id}))


def list_devices(session: Session, store_ids: frozenset[str] | None) -> list[Device]:
    query = select(Device).order_by(Device.created_at)
    if store_ids is not None:
        query = query.where(Device.store_id.in_(store_ids))
    return list(session.scalars(query))
