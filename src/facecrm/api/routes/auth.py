"""Staff log-in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from facecrm.api.deps import current_principal, get_crm
from facecrm.api.problems import ApiError
from facecrm.api.schemas import Me, Token
from facecrm.api.security import issue_token
from facecrm.crm import accounts, audit, db
from facecrm.crm.authz import Principal
from facecrm.crm.service import FaceCRM

router = APIRouter(tags=["auth"])


@router.post("/auth/token", response_model=Token)
def token(
    request: Request,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=200)],
    crm: FaceCRM = Depends(get_crm),
) -> Token:
    """OAuth2 password flow: a bearer token for a staff user (throttled on failures)."""
    guard = request.app.state.login_guard
    address = request.client.host if request.client else "?"
    if guard.blocked(username, address):
        raise ApiError(429, "too many failed log-ins; try again in 15 minutes")
    with db.transaction(crm.sessions) as session:
        user = accounts.authenticate(session, username, password)
        anonymous = Principal("staff", "", username[:60], "", frozenset())
        if user is None:
            audit.record(session, anonymous, "login_failed")
        else:
            audit.record(session, accounts.staff_principal(user), "login")
    if user is None:
        guard.failed(username, address)
        raise ApiError(401, "wrong username or password")
    guard.succeeded(username)
    minutes = crm.settings.token_minutes
    return Token(access_token=issue_token(crm.settings, user.id), expires_in=minutes * 60)


@router.get("/me", response_model=Me)
def me(principal: Principal = Depends(current_principal)) -> Me:
    """Who the token or key belongs to."""
    stores = sorted(principal.stores) if principal.stores is not None else None
    return Me(
        kind=principal.kind,
        id=principal.id,
        name=principal.name,
        role=principal.role,
        stores=stores,
    )
