"""Staff log-in and log-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from facecrm.api.deps import CrmDep, PrincipalDep, SessionDep, SettingsDep, TokenDep
from facecrm.api.login import log_in, log_out
from facecrm.api.problems import ApiError
from facecrm.api.schemas import PROBLEMS, Me, Token

router = APIRouter(tags=["auth"], responses=PROBLEMS)


def client_address(request: Request) -> str:
    """The peer address (X-Forwarded-For only counts if the server trusts the proxy)."""
    return request.client.host if request.client else "?"


@router.post("/auth/token", response_model=Token)
def token(
    request: Request,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=200)],
    crm: CrmDep,
) -> Token:
    """OAuth2 password flow: a bearer token for a staff user (throttled on failures).

    Refusals are `LoginThrottledError` (429, Retry-After) and `LoginFailedError` (401).
    """
    guard = request.app.state.login_guard
    done = log_in(crm, guard, username, password, client_address(request), "api")
    minutes = crm.settings.token_minutes
    return Token(access_token=done.token, expires_in=minutes * 60)


@router.post("/auth/logout", status_code=204)
def logout(
    token: TokenDep, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Revoke the bearer token of this request (the user's other sessions stay)."""
    if principal.kind != "staff" or not token:
        raise ApiError(422, "only a staff token can be logged out; revoke a device instead")
    log_out(session, settings, token)
    return Response(status_code=204)


@router.get("/me", response_model=Me)
def me(principal: PrincipalDep) -> Me:
    """Who the token or key belongs to."""
    stores = sorted(principal.stores) if principal.stores is not None else None
    return Me(
        kind=principal.kind,
        id=principal.id,
        name=principal.name,
        role=principal.role,
        stores=stores,
    )
