"""Request dependencies: the services, the authenticated principal, permissions."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from facecrm.api.problems import ApiError
from facecrm.api.security import read_token
from facecrm.config import API_PREFIX, Settings
from facecrm.crm import accounts
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.service import FaceCRM

oauth2 = OAuth2PasswordBearer(tokenUrl=f"{API_PREFIX}/auth/token", auto_error=False)
api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_crm(request: Request) -> FaceCRM:
    return request.app.state.crm  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.crm.settings  # type: ignore[no-any-return]


def principal_for_token(crm: FaceCRM, token: str) -> Principal | None:
    """The staff principal of a valid token: active user, current version, not logged out."""
    claims = read_token(crm.settings, token)
    if claims is None:
        return None
    with crm.sessions() as session:
        user = accounts.staff_for_token(session, claims.staff_id, claims.version, claims.token_id)
        return None if user is None else accounts.staff_principal(user)


def principal_for_key(crm: FaceCRM, key: str) -> Principal | None:
    """The device principal of an API key that has not been revoked."""
    with crm.sessions() as session:
        device = accounts.device_for_key(session, key)
        return None if device is None else accounts.device_principal(device)


def still_valid(
    crm: FaceCRM, principal: Principal, token: str | None = None, key: str | None = None
) -> Callable[[], bool]:
    """A re-check of the credentials a long-lived response (SSE) was opened with."""

    def check() -> bool:
        again = principal_for_key(crm, key) if key else principal_for_token(crm, token or "")
        return again is not None and again.id == principal.id

    return check


def current_principal(
    request: Request,
    token: str | None = Depends(oauth2),
    key: str | None = Depends(api_key),
) -> Principal:
    """The staff user (bearer token) or device (X-API-Key) making the request."""
    crm = get_crm(request)
    if key:
        device = principal_for_key(crm, key)
        if device is not None:
            return device
        raise ApiError(401, "the device key is not valid")
    if token:
        principal = principal_for_token(crm, token)
        if principal is not None:
            return principal
        raise ApiError(401, "the token is invalid or expired; log in again")
    raise ApiError(401, "log in (bearer token) or use a device key (X-API-Key)")


def allow(permission: Permission) -> Callable[..., Principal]:
    """A dependency: the principal, if it holds `permission` (else 403)."""

    def _check(principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.can(permission):
            raise ApiError(403, f"the {principal.role} role may not {permission.value}")
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
    request: Request, principal: Principal = Depends(allow(Permission.IDENTIFY))
) -> Principal:
    """A dependency: a principal allowed to identify, charged against the staff limit."""
    charge_identification(request, principal)
    return principal


def multipart(request: Request, _: Principal = Depends(current_principal)) -> None:
    """Uploads must be multipart/form-data (415 otherwise); checked after authentication."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data with the field 'image'")
