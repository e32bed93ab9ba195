"""Request dependencies: the services, one database session per request, the principal.

Routes and console pages use the `Annotated` aliases below (`CrmDep`, `SessionDep`,
`SettingsDep`, `AlertsDep` and a principal alias per permission) instead of
`= Depends(...)` defaults, so a signature says what a route needs and nothing else.

Transactions: a request-scoped session, not one transaction per crm function.
`SessionDep` opens one session per request and one transaction in it; the route hands
it to crm functions (which check the permission, do the work and record the audit
event in it), and the dependency commits when the route has returned, or rolls back
on any exception. Why this and not crm functions that each own their transaction:
the crm functions stay composable (a route, a console page, the CLI and a test can
run several in one transaction, e.g. the principal's look-up and the work), and a
route cannot forget to commit or commit twice.

The dependency has `scope="function"`: FastAPI runs its exit code (the commit) once
the route function has returned and the response body is serialised, but *before*
the response is sent (the default "request" scope commits after sending it, so a
failing commit would leave the client with a 201 for something not stored). A
commit that fails raises through FastAPI's exception handlers (e.g. 409/422
problem+json) and nothing is stored; see `tests/test_request_session.py`.

Work that must happen after its own commit (the in-memory gallery after an
enrollment or erasure, publishing an alert, scrubbing erased rows, a failed log-in's
audit event that must survive the refusal) stays in services that own their
transaction (`FaceCRM`, `AlertService`, `accounts.login`); routes calling those take
no `SessionDep`. Streaming responses (alert streams, photos) never take one: the
stream's credential re-check opens a short session per check (`accounts.recheck`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.orm import Session

from facecrm.alerts.service import AlertService
from facecrm.api import device_session
from facecrm.api.problems import ApiError
from facecrm.api.security import read_token
from facecrm.config import API_PREFIX, Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import DeviceKind
from facecrm.crm.service import FaceCRM

oauth2 = OAuth2PasswordBearer(tokenUrl=f"{API_PREFIX}/auth/token", auto_error=False)
api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_crm(request: Request) -> FaceCRM:
    return request.app.state.crm  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.crm.settings  # type: ignore[no-any-return]


def get_alerts(request: Request) -> AlertService:
    return request.app.state.alerts  # type: ignore[no-any-return]


CrmDep = Annotated[FaceCRM, Depends(get_crm)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AlertsDep = Annotated[AlertService, Depends(get_alerts)]
TokenDep = Annotated[str | None, Depends(oauth2)]
KeyDep = Annotated[str | None, Depends(api_key)]


def get_session(crm: CrmDep) -> Iterator[Session]:
    """One session and transaction per request: committed before the response is sent."""
    with db.transaction(crm.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def principal_for_token(session: Session, settings: Settings, token: str) -> Principal | None:
    """The staff principal of a valid token: active user, current version, not logged out."""
    claims = read_token(settings, token)
    if claims is None:
        return None
    return accounts.token_principal(session, claims.staff_id, claims.version, claims.token_id)


def still_valid(
    crm: FaceCRM, principal: Principal, token: str | None = None, key: str | None = None
) -> Callable[[], bool]:
    """A re-check of the credentials a long-lived response (SSE) was opened with; each
    check opens its own short session, so the stream holds none between checks."""
    claims = read_token(crm.settings, token) if token and not key else None

    def check() -> bool:
        if key:
            return accounts.recheck(crm.sessions, principal, key=key)
        if claims is None:
            return False
        return accounts.recheck(
            crm.sessions, principal, token=(claims.staff_id, claims.version, claims.token_id)
        )

    return check


def current_principal(
    request: Request,
    crm: CrmDep,
    session: SessionDep,
    settings: SettingsDep,
    token: TokenDep,
    key: KeyDep,
) -> Principal:
    """The staff user (bearer token) or device (X-API-Key) making the request, or a till
    through its page's browser session (payment routes only: `api.device_session`).

    A device's request updates its "last seen" (`accounts.device_seen`: at most one write
    per device every few seconds); what an agent reports about itself comes with its
    heartbeat (`POST /agent/heartbeat`).
    """
    if key:
        device = accounts.key_principal(session, key)
        if device is not None and device.role == DeviceKind.KIOSK:
            raise ApiError(403, "a kiosk key opens the console's kiosk screen, not the API")
        if device is not None:
            accounts.device_seen(crm.sessions, device.id)
            return device
        raise ApiError(401, "the device key is not valid")
    if token:
        principal = principal_for_token(session, settings, token)
        if principal is not None:
            return principal
        raise ApiError(401, "the token is invalid or expired; log in again")
    till = device_session.till_principal(request, session, settings)
    if till is not None:
        accounts.device_seen(crm.sessions, till.id)
        return till
    raise ApiError(401, "log in (bearer token) or use a device key (X-API-Key)")


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def allow(permission: Permission) -> Callable[..., Principal]:
    """A dependency: the principal, if it holds `permission` (else an early 403; the crm
    operation checks it again, so API, console and CLI cannot drift)."""

    def _check(principal: PrincipalDep) -> Principal:
        if not principal.can(permission):
            raise ApiError(403, f"the {principal.role} role may not {permission.value}")
        return principal

    return _check


def allow_any(*permissions: Permission) -> Callable[..., Principal]:
    """A dependency: the principal, if it holds one of `permissions` (else an early 403)."""

    def _check(principal: PrincipalDep) -> Principal:
        if not any(principal.can(p) for p in permissions):
            names = " or ".join(p.value for p in permissions)
            raise ApiError(403, f"the {principal.role} role may not {names}")
        return principal

    return _check


def charge_identification(request: Request, principal: Principal) -> None:
    """One budget per staff member for every way of identifying a face (console look-up,
    API identify, API verify), so a second path cannot bypass the first's limit.
    Devices are not charged: an agent identifies every face its cameras see."""
    if principal.kind != "staff":
        return
    if not request.app.state.lookup_limiter.allow(principal.id):
        raise ApiError(429, "too many identifications; wait a minute", reason="rate_limited")


def identifier(
    request: Request, principal: Annotated[Principal, Depends(allow(Permission.IDENTIFY))]
) -> Principal:
    """A dependency: a principal allowed to identify, charged against the staff limit."""
    charge_identification(request, principal)
    return principal


def multipart(request: Request, _: PrincipalDep) -> None:
    """Uploads must be multipart/form-data (415 otherwise); checked after authentication."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data with the field 'image'")


# one alias per permission a route needs (the name says what the caller may do)
StoresReader = Annotated[Principal, Depends(allow(Permission.STORES_READ))]
StoresWriter = Annotated[Principal, Depends(allow(Permission.STORES_WRITE))]
StaffWriter = Annotated[Principal, Depends(allow(Permission.STAFF_WRITE))]
# admins, and managers for their stores' associates (the crm layer decides whose account)
StaffManager = Annotated[
    Principal, Depends(allow_any(Permission.STAFF_WRITE, Permission.STAFF_MANAGE))
]
DeviceManager = Annotated[Principal, Depends(allow(Permission.DEVICES_MANAGE))]
CustomerReader = Annotated[Principal, Depends(allow(Permission.CUSTOMERS_READ))]
CustomerWriter = Annotated[Principal, Depends(allow(Permission.CUSTOMERS_WRITE))]
CustomerExporter = Annotated[Principal, Depends(allow(Permission.CUSTOMERS_EXPORT))]
CustomerImporter = Annotated[Principal, Depends(allow(Permission.CUSTOMERS_IMPORT))]
CustomerEraser = Annotated[Principal, Depends(allow(Permission.CUSTOMERS_ERASE))]
Identifier = Annotated[Principal, Depends(identifier)]
ActivityReader = Annotated[Principal, Depends(allow(Permission.ACTIVITY_READ))]
ActivityWriter = Annotated[Principal, Depends(allow(Permission.ACTIVITY_WRITE))]
VisitWriter = Annotated[Principal, Depends(allow(Permission.VISITS_WRITE))]
PurchaseWriter = Annotated[Principal, Depends(allow(Permission.PURCHASES_WRITE))]
Auditor = Annotated[Principal, Depends(allow(Permission.AUDIT_READ))]
AlertHandler = Annotated[Principal, Depends(allow(Permission.ALERTS))]
StoreAgent = Annotated[Principal, Depends(allow(Permission.AGENT))]
AnalyticsReader = Annotated[Principal, Depends(allow(Permission.ANALYTICS_READ))]
Multipart = Annotated[None, Depends(multipart)]  # last parameter: after the permission
