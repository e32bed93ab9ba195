"""Request dependencies: the services, the authenticated principal, permissions."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from facecrm.api.problems import ApiError
from facecrm.api.security import staff_id_from_token
from facecrm.config import Settings
from facecrm.crm import accounts
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import StaffUser
from facecrm.crm.service import FaceCRM

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_crm(request: Request) -> FaceCRM:
    return request.app.state.crm  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.crm.settings  # type: ignore[no-any-return]


def principal_for_token(crm: FaceCRM, token: str) -> Principal | None:
    """The staff principal of a valid token whose user is still active."""
    staff_id = staff_id_from_token(crm.settings, token)
    if staff_id is None:
        return None
    with crm.sessions() as session:
        user = session.scalar(
            select(StaffUser)
            .where(StaffUser.id == staff_id)
            .options(selectinload(StaffUser.stores))
        )
        if user is None or not user.active:
            return None
        return accounts.staff_principal(user)


def current_principal(
    request: Request,
    token: str | None = Depends(oauth2),
    key: str | None = Depends(api_key),
) -> Principal:
    """The staff user (bearer token) or device (X-API-Key) making the request."""
    crm = get_crm(request)
    if key:
        with crm.sessions() as session:
            device = accounts.device_for_key(session, key)
            if device is not None:
                return accounts.device_principal(device)
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


def multipart(request: Request, _: Principal = Depends(current_principal)) -> None:
    """Uploads must be multipart/form-data (415 otherwise); checked after authentication."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data with the field 'image'")
