"""Stores, staff accounts and devices; password and API-key checks; revocation.

Staff passwords are hashed with Argon2id. Device API keys are 256-bit random
tokens shown once; only their SHA-256 is stored (a slow hash adds nothing for
keys with that much entropy, and lookups stay O(1)).

Revocation takes effect on the next request: every staff token carries the
user's `token_version`, which disabling, a password change or deletion bumps
(or removes), and a logged-out token's id is kept in `revoked_tokens` until it
would have expired anyway.

Who manages whose account (`_managed`): administrators manage everyone. A manager
creates and manages associates whose stores are all among the manager's own (an
associate who also works in another store belongs to that store's manager too, so
only an administrator changes them); a manager sees the accounts that share one of
their stores, and nobody else's. Deleting accounts stays with administrators.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from facecrm.crm import audit, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import (
    ConflictError,
    Forbidden,
    InvalidError,
    LoginFailedError,
    LoginThrottledError,
    NotFoundError,
)
from facecrm.crm.models import (
    Device,
    DeviceKind,
    DeviceStatus,
    RevokedToken,
    Role,
    StaffUser,
    Store,
    staff_stores,
    utcnow,
)
from facecrm.crm.throttle import LoginGuard

_hasher = PasswordHasher()
DEVICE_KEY_PREFIX = "fcd_"
CHAIN_WIDE = frozenset({Role.ADMIN, Role.AUDITOR})
MIN_PASSWORD = 8


def check_password(password: str) -> None:
    """Refuse a password too short once surrounding blanks are ignored (all-blank included).

    Shared by account creation and password change, so both hold the same rule. Blanks
    are whitespace, and invisible characters too (zero-width spaces and joiners, other
    format and control characters): a password of eight of them looks empty.
    """
    visible = [c for c in password if not c.isspace() and unicodedata.category(c)[0] != "C"]
    if len(visible) < MIN_PASSWORD or len(password.strip()) < MIN_PASSWORD:
        raise InvalidError(
            f"the password must have at least {MIN_PASSWORD} characters besides spaces"
        )


def create_store(session: Session, code: str, name: str, principal: Principal) -> Store:
    """A new store; audited here, so every path that adds one (API, CLI) is."""
    principal.require(Permission.STORES_WRITE)
    code, name = code.strip(), name.strip()
    if not code or not name:
        raise InvalidError("a store needs a code and a name")
    if session.scalar(select(Store).where(Store.code == code)) is not None:
        raise ConflictError(f"a store with code {code!r} exists")
    store = Store(code=code, name=name)
    session.add(store)
    session.flush()
    audit.record(session, principal, "store_create", None, store.id)
    return store


def get_store(session: Session, store_id: str) -> Store:
    store = session.get(Store, store_id)
    if store is None:
        raise NotFoundError(f"no store with id {store_id!r}")
    return store


def list_stores(session: Session, principal: Principal) -> list[Store]:
    principal.require(Permission.STORES_READ)
    return list(session.scalars(select(Store).order_by(Store.code)))


def list_staff(session: Session, principal: Principal | None = None) -> list[StaffUser]:
    """The accounts `principal` may see (see the module doc); every account for an
    administrator or for None, the operator's `facecrm admin list`."""
    query = select(StaffUser).options(selectinload(StaffUser.stores))  # read after the session
    if principal is not None and not principal.can(Permission.STAFF_WRITE):
        principal.require(Permission.STAFF_MANAGE)
        shared = select(staff_stores.c.staff_id).where(
            staff_stores.c.store_id.in_(principal.stores or ())
        )
        query = query.where(StaffUser.id.in_(shared))
    return list(session.scalars(query.order_by(StaffUser.username)))


def _require_staff_rights(principal: Principal) -> None:
    if not principal.can(Permission.STAFF_WRITE):
        principal.require(Permission.STAFF_MANAGE)


def may_manage(principal: Principal, user: StaffUser) -> bool:
    """Whether `principal` may change `user`'s account (see the module doc)."""
    if principal.can(Permission.STAFF_WRITE):
        return True
    if not principal.can(Permission.STAFF_MANAGE) or principal.stores is None:
        return False
    ids = {s.id for s in user.stores}
    return user.role == Role.ASSOCIATE and bool(ids) and ids <= principal.stores


def _managed(session: Session, principal: Principal, ref: str) -> StaffUser:
    """The account `ref` names, if `principal` may change it: another store's account is
    unknown to a manager (404), a visible one that is not theirs to manage is 403."""
    _require_staff_rights(principal)
    user = find_staff(session, ref)
    if may_manage(principal, user):
        return user
    if principal.stores and principal.stores & {s.id for s in user.stores}:
        raise Forbidden("a manager manages the associates of their own stores only")
    raise NotFoundError(f"no staff user {ref!r}")


def _check_new_stores(principal: Principal, role: str, store_ids: list[str]) -> None:
    """A manager gives accounts only the associate role and only their own stores."""
    if principal.can(Permission.STAFF_WRITE):
        return
    if role != Role.ASSOCIATE:
        raise Forbidden("a manager creates associates only")
    if not store_ids or not set(store_ids) <= (principal.stores or frozenset()):
        raise Forbidden("an associate of your own stores: give one or more of them")


def create_staff(
    session: Session,
    username: str,
    password: str,
    role: str,
    store_ids: list[str] | None = None,
    display_name: str = "",
    *,
    principal: Principal,
) -> StaffUser:
    """A new staff account; audited here, so every path that adds one (API, CLI) is."""
    _require_staff_rights(principal)
    username = username.strip()
    if not username:
        raise InvalidError("the username is empty")
    check_password(password)
    if role not in {r.value for r in Role}:
        raise InvalidError(f"unknown role {role!r}; use admin, manager, associate or auditor")
    if role in CHAIN_WIDE and store_ids:
        raise InvalidError(f"a {role} acts chain-wide: give no stores")
    _check_new_stores(principal, role, list(store_ids or []))
    taken = select(StaffUser.id).where(func.lower(StaffUser.username) == username.lower())
    if session.scalar(taken) is not None:
        raise ConflictError(f"the username {username!r} is taken (usernames ignore case)")
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
    audit.record(session, principal, "staff_create", username=user.username, role=user.role)
    return user


@functools.cache
def _dummy_hash() -> str:
    """What an unknown username's password is checked against, so that it costs what a
    known one's does. Made on first use, not at import: every CLI command imports this
    module, and an argon2 hash is a noticeable part of a quick command's start."""
    return _hasher.hash("timing-equaliser")


def authenticate(session: Session, username: str, password: str) -> StaffUser | None:
    """The active user with this password, else None (same work either way)."""
    dummy = _dummy_hash()  # before the lookup: a process's first login costs the same for all
    user = session.scalar(
        select(StaffUser)
        .where(StaffUser.username == username)
        .options(selectinload(StaffUser.stores))
    )
    try:
        _hasher.verify(user.password_hash if user else dummy, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    return user


def login(
    sessions: sessionmaker[Session],
    guard: LoginGuard,
    username: str,
    password: str,
    address: str,
    channel: str,
) -> StaffUser:
    """The one log-in rule for every channel (API, console): throttle, check, audit, count.

    A throttled attempt is refused before the password is looked at (`LoginThrottledError`)
    and not audited: it checked nothing. A checked attempt is audited (`login` or
    `login_failed`) in its own transaction, committed before a failure is raised, so a
    refused guess stays on the trail; the guard then counts it, or resets the account and
    remembers the address on success. Takes the session factory, not a session, because
    that commit must not depend on the caller.
    """
    wait = guard.retry_after(username, address)
    if wait > 0:
        raise LoginThrottledError(wait)
    with db.transaction(sessions) as session:
        user = authenticate(session, username, password)
        if user is None:
            anonymous = Principal("staff", "", username[:60], "", frozenset())
            audit.record(session, anonymous, "login_failed", channel=channel)
        else:
            audit.record(session, staff_principal(user), "login", channel=channel)
    if user is None:
        guard.failed(username, address)
        raise LoginFailedError
    guard.succeeded(username, address)
    return user


def staff_for_token(
    session: Session, staff_id: str, version: int, token_id: str
) -> StaffUser | None:
    """The user a token names, if it is still good: active, same version, not logged out."""
    user = session.scalar(
        select(StaffUser).where(StaffUser.id == staff_id).options(selectinload(StaffUser.stores))
    )
    if user is None or not user.active or user.token_version != version:
        return None
    if session.get(RevokedToken, token_id) is not None:
        return None
    return user


def revoke_token(session: Session, staff_id: str, token_id: str, expires_at: datetime) -> None:
    """Log out one session (token id) only; the user's other sessions stay valid.

    Rows of tokens that have expired anyway are pruned here, so the table stays small.
    """
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < utcnow()))
    if session.get(RevokedToken, token_id) is None and expires_at > datetime.now(UTC):
        session.add(RevokedToken(jti=token_id, staff_id=staff_id, expires_at=expires_at))
        session.flush()


def logout(
    session: Session, staff_id: str, version: int, token_id: str, expires_at: datetime
) -> bool:
    """Revoke one still-valid session (token id) and audit it; False when it was void."""
    user = staff_for_token(session, staff_id, version, token_id)
    if user is None:
        return False
    revoke_token(session, user.id, token_id, expires_at)
    audit.record(session, staff_principal(user), "logout")
    return True


def token_principal(
    session: Session, staff_id: str, version: int, token_id: str
) -> Principal | None:
    """The principal of a still-good token (see `staff_for_token`), else None."""
    user = staff_for_token(session, staff_id, version, token_id)
    return None if user is None else staff_principal(user)


def key_principal(session: Session, key: str) -> Principal | None:
    """The principal of a device key that has not been revoked, else None."""
    device = device_for_key(session, key)
    return None if device is None else device_principal(device)


def recheck(
    sessions: sessionmaker[Session],
    principal: Principal,
    *,
    key: str | None = None,
    token: tuple[str, int, str] | None = None,
) -> bool:
    """Whether the credentials a long-lived response was opened with still name
    `principal`; in a short session of its own (a stream holds none between checks)."""
    with sessions() as session:
        if key is not None:
            again = key_principal(session, key)
        elif token is not None:
            again = token_principal(session, *token)
        else:
            return False
    return again is not None and again.id == principal.id


def find_staff(session: Session, ref: str) -> StaffUser:
    """A staff user by id or by username (case-insensitive)."""
    user = session.get(StaffUser, ref) or session.scalar(
        select(StaffUser).where(func.lower(StaffUser.username) == ref.strip().lower())
    )
    if user is None:
        raise NotFoundError(f"no staff user {ref!r}")
    return user


def _keep_an_admin(session: Session, user: StaffUser) -> None:
    if user.role != Role.ADMIN or not user.active:
        return
    others = select(func.count()).where(
        StaffUser.role == Role.ADMIN, StaffUser.active.is_(True), StaffUser.id != user.id
    )
    if not session.scalar(others):
        raise ConflictError("this is the last active administrator; create another one first")


def set_active(session: Session, principal: Principal, ref: str, active: bool) -> StaffUser:
    """Disable (every token of the user stops working at once) or enable an account."""
    user = _managed(session, principal, ref)
    if not active:
        _keep_an_admin(session, user)
    if user.active != active:
        user.active = active
        user.token_version += 1  # an enabled account starts with no valid token
    audit.record(
        session, principal, "staff_enable" if active else "staff_disable", username=user.username
    )
    return user


def set_password(session: Session, principal: Principal, ref: str, password: str) -> StaffUser:
    """A new password; every token issued before it stops working."""
    _require_staff_rights(principal)
    check_password(password)
    user = _managed(session, principal, ref)
    user.password_hash = _hasher.hash(password)
    user.token_version += 1
    audit.record(session, principal, "staff_password", username=user.username)
    return user


def assign_stores(
    session: Session, principal: Principal, ref: str, store_ids: list[str]
) -> StaffUser:
    """Set the stores an account works in. Taking a store away bumps the token version:
    open sessions and alert streams of the removed store end at once."""
    user = _managed(session, principal, ref)
    wanted = list(dict.fromkeys(store_ids))
    if user.role in CHAIN_WIDE and wanted:
        raise InvalidError(f"a {user.role} acts chain-wide: give no stores")
    _check_new_stores(principal, user.role, wanted)
    stores = [get_store(session, s) for s in wanted]
    if {s.id for s in user.stores} - set(wanted):
        user.token_version += 1
    user.stores = stores
    session.flush()
    audit.record(session, principal, "staff_stores", username=user.username, stores=wanted)
    return user


def unlock(session: Session, principal: Principal, guard: LoginGuard, ref: str) -> bool:
    """End an account's log-in back-off (its owner called the manager); whether it was on.

    The guard's counts live in the server process, so this acts on the process that
    serves the request (the one that counted the failures, with a single server).
    """
    user = _managed(session, principal, ref)
    was_locked = guard.unlock(user.username)
    audit.record(session, principal, "staff_unlock", username=user.username, locked=was_locked)
    return was_locked


@dataclass(frozen=True, slots=True)
class StaffView:
    """An account as the staff pages and `GET /staff` show it."""

    id: str
    username: str
    display_name: str
    role: str
    active: bool
    store_ids: list[str]
    locked_seconds: float  # the log-in back-off still running (0: none)
    manageable: bool  # whether the viewer may change it


def staff_views(session: Session, principal: Principal, guard: LoginGuard) -> list[StaffView]:
    """`list_staff` for `principal`, with each account's lock state and whether the
    principal may change it."""
    return [
        StaffView(
            u.id,
            u.username,
            u.display_name,
            u.role,
            u.active,
            [s.id for s in u.stores],
            round(guard.account_wait(u.username), 1),
            may_manage(principal, u),
        )
        for u in list_staff(session, principal)
    ]


def delete_staff(session: Session, principal: Principal, ref: str) -> None:
    """Delete an account; the audit trail keeps its name, shifts go, alerts lose the link."""
    principal.require(Permission.STAFF_WRITE)
    user = find_staff(session, ref)
    _keep_an_admin(session, user)
    audit.record(session, principal, "staff_delete", username=user.username, role=user.role)
    session.delete(user)
    session.flush()


def staff_principal(user: StaffUser) -> Principal:
    chain_wide = user.role in CHAIN_WIDE
    stores = None if chain_wide else frozenset(s.id for s in user.stores)
    return Principal("staff", user.id, user.username, user.role, stores)


def create_device(
    session: Session, store_id: str, kind: str, name: str = "", *, principal: Principal
) -> tuple[Device, str]:
    """A new device and its API key (returned once, never stored); audited."""
    principal.require(Permission.DEVICES_MANAGE)
    principal.require_store(store_id)
    if kind not in {k.value for k in DeviceKind}:
        raise InvalidError(f"unknown device kind {kind!r}; use agent, pos or kiosk")
    store = get_store(session, store_id)
    key = DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)
    device = Device(
        store_id=store.id, kind=kind, name=name or f"{kind} {store.code}", key_hash=hash_key(key)
    )
    session.add(device)
    session.flush()
    audit.record(session, principal, "device_create", None, store.id, kind=kind)
    return device, key


def rotate_device_key(session: Session, principal: Principal, device_id: str) -> tuple[Device, str]:
    """A new API key for a device (shown once); the old one is refused from now on."""
    device = _device(session, principal, device_id)
    if device.revoked_at is not None:
        raise ConflictError("the device is revoked; create a new one")
    key = DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)
    device.key_hash = hash_key(key)
    session.flush()
    audit.record(session, principal, "device_rotate", None, device.store_id, device=device.id)
    return device, key


def _device(session: Session, principal: Principal, device_id: str) -> Device:
    """A device of the principal's stores (another store's is unknown: 404)."""
    principal.require(Permission.DEVICES_MANAGE)
    device = session.get(Device, device_id)
    if device is None or not principal.may_act_in(device.store_id):
        raise NotFoundError(f"no device with id {device_id!r}")
    return device


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def device_for_key(session: Session, key: str) -> Device | None:
    device = session.scalar(select(Device).where(Device.key_hash == hash_key(key)))
    if device is None or device.revoked_at is not None:
        return None
    return device


def revoke_device(session: Session, principal: Principal, device_id: str) -> Device:
    """Revoke a device's key for good (its visits stay); in the principal's stores only."""
    device = _device(session, principal, device_id)
    if device.revoked_at is None:
        device.revoked_at = utcnow()
    audit.record(session, principal, "device_revoke", None, device.store_id, device=device.id)
    return device


def device_principal(device: Device) -> Principal:
    return Principal("device", device.id, device.name, device.kind, frozenset({device.store_id}))


def device_store(principal: Principal) -> str:
    """The one store a device acts in (`device_principal` gives it exactly one).

    The single place that turns "this device" into "its store", for everything a device
    reports (visits, camera health, gallery syncs). A principal with no store (a staff
    user of none) is `ConflictError`: there is no store to put its report in.
    """
    store_id = next(iter(principal.stores or ()), None)
    if store_id is None:
        raise ConflictError("the device has no store")
    return store_id


def list_devices(session: Session, principal: Principal | None) -> list[Device]:
    """The devices of the principal's stores (every device for a chain-wide principal or
    for None, the operator's `facecrm devices list`)."""
    store_ids = None
    if principal is not None:
        principal.require(Permission.DEVICES_MANAGE)
        store_ids = principal.visible_stores()
    query = select(Device).order_by(Device.created_at)
    if store_ids is not None:
        query = query.where(Device.store_id.in_(store_ids))
    return list(session.scalars(query))


SEEN_EVERY = timedelta(seconds=15)  # a device's heartbeat is written at most this often


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device with what it last reported (the device pages and `GET /devices`)."""

    id: str
    store_id: str
    kind: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_seen_at: datetime | None
    agent_version: str | None
    queue_depth: int | None


def device_views(session: Session, principal: Principal) -> list[DeviceView]:
    """`list_devices` with each device's last heartbeat."""
    devices = list_devices(session, principal)
    ids = [d.id for d in devices]
    query = select(DeviceStatus).where(DeviceStatus.device_id.in_(ids))
    seen = {s.device_id: s for s in session.scalars(query)} if ids else {}
    views = []
    for d in devices:
        status = seen.get(d.id)
        views.append(
            DeviceView(
                d.id,
                d.store_id,
                d.kind,
                d.name,
                d.created_at,
                d.revoked_at,
                status.last_seen_at if status else None,
                status.agent_version if status else None,
                status.queue_depth if status else None,
            )
        )
    return views


# device id -> when this process last wrote its last_seen_at (see `device_seen`)
_seen_written: dict[str, datetime] = {}


def device_seen(
    sessions: sessionmaker[Session], device_id: str, now: datetime | None = None
) -> None:
    """Record that a device made an authenticated request: its "last seen", nothing else.

    Kept because a till sends no heartbeat, and its page would say "never" otherwise. Cheap
    by construction: each process writes a device's row at most every `SEEN_EVERY` and does
    no database work at all in between (not even a read), in its own short transaction so
    no request holds the write lock. Not an audited action (a device saying "I am here").
    What an agent reports about itself comes with its heartbeat (`device_reported`).
    """
    now = now or utcnow()
    last = _seen_written.get(device_id)
    if last is not None and timedelta(0) <= now - last < SEEN_EVERY:
        return
    _seen_written[device_id] = now
    try:
        with db.transaction(sessions) as session:
            status = session.get(DeviceStatus, device_id)
            if status is None:
                session.add(DeviceStatus(device_id=device_id, last_seen_at=now))
            elif status.last_seen_at < now:
                status.last_seen_at = now
    except IntegrityError:  # a concurrent first request of the same device wrote it
        return


def device_reported(
    session: Session,
    device: Principal,
    agent_version: str | None,
    queue_depth: int | None,
    now: datetime,
) -> None:
    """Store what an agent's heartbeat says about itself (version, outbox depth), in the
    heartbeat's transaction: the devices page shows it. None leaves a value as it was."""
    device.require(Permission.AGENT)
    status = session.get(DeviceStatus, device.id)
    if status is None:
        status = DeviceStatus(device_id=device.id, last_seen_at=now)
        session.add(status)
    status.last_seen_at = max(now, status.last_seen_at)
    if agent_version is not None:
        status.agent_version = agent_version
    if queue_depth is not None:
        status.queue_depth = queue_depth
