"""The kiosk: a `kiosk` device's key opens a kiosk session in this browser.

The session shows one screen -- welcome, then the enrollment form -- with no navigation;
every other console page sends a kiosk browser back to it (`console.staff`). The cookie
is a signed token naming the device and a tag of its key (`crm.kiosk`), HttpOnly and
SameSite=Strict like the staff session; revoking the device or rotating its key ends it.
Enrollments are charged to the device's identification budget (the duplicate check
answers "is this face enrolled?").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import jwt
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from facecrm.api.deps import CrmDep, SessionDep, SettingsDep
from facecrm.api.problems import ApiError
from facecrm.config import Settings
from facecrm.crm import kiosk
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import LoginFailedError
from facecrm.keys import server_secret
from facecrm.web import enrollment_form
from facecrm.web.console import KIOSK_COOKIE, check_csrf, render

SESSION_DAYS = 30  # a kiosk stays set up; revoke the device to end it sooner
router = APIRouter(prefix="/console/kiosk", include_in_schema=False)


class KioskLoginRequired(Exception):
    """The kiosk page needs a kiosk session: show the kiosk log-in."""


def _issue(settings: Settings, device_id: str, tag: str) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": device_id,
        "tag": tag,
        "typ": "kiosk",
        "iat": now,
        "exp": now + timedelta(days=SESSION_DAYS),
    }
    return jwt.encode(claims, server_secret(settings), algorithm="HS256")


def _read(settings: Settings, token: str) -> tuple[str, str] | None:
    try:
        claims = jwt.decode(
            token,
            server_secret(settings),
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "typ"]},
        )
    except jwt.PyJWTError:
        return None
    sub, tag = claims.get("sub"), claims.get("tag")
    if claims.get("typ") != "kiosk" or not isinstance(sub, str) or not isinstance(tag, str):
        return None
    return sub, tag


def kiosk_device(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    token = request.cookies.get(KIOSK_COOKIE)
    found = _read(settings, token) if token else None
    principal = kiosk.principal_for(session, *found) if found else None
    if principal is None:
        raise KioskLoginRequired
    return principal


Kiosk = Annotated[Principal, Depends(kiosk_device)]


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    response = render(request, "kiosk_login.html", None, error=None)
    response.delete_cookie(KIOSK_COOKIE, path="/console")  # a session that no longer works
    return response


@router.post("/login")
def login(
    request: Request,
    key: Annotated[str, Form(max_length=200)],
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """A kiosk key → a kiosk session in this browser (audited as `kiosk_login`)."""
    check_csrf(request, csrf)
    try:
        principal, tag = kiosk.open_session(session, key.strip())
    except LoginFailedError as exc:
        response = render(request, "kiosk_login.html", None, error="Not a valid kiosk key.")
        response.status_code = exc.status
        return response
    response = RedirectResponse("/console/kiosk", status_code=303)
    response.set_cookie(
        KIOSK_COOKIE,
        _issue(settings, principal.id, tag),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_DAYS * 86400,
        path="/console",
    )
    return response


@router.get("", response_class=HTMLResponse)
def kiosk_page(request: Request, session: SessionDep, principal: Kiosk) -> Response:
    """Welcome, then the enrollment form in the store's language and with its options."""
    store_id = enrollment_form.store_of(principal)
    form = enrollment_form.context(session, principal, store_id)
    return render(request, "kiosk.html", None, **form)


@router.post("/enroll")
def enroll(
    request: Request, form: enrollment_form.EnrollFormDep, crm: CrmDep, principal: Kiosk
) -> Response:
    """Enroll at the kiosk; the answer says only that it worked (a kiosk reads no cards)."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    principal.require(Permission.CUSTOMERS_WRITE)
    if not request.app.state.lookup_limiter.allow(principal.id):
        raise ApiError(429, "too many enrollments; wait a minute", reason="rate_limited")
    enrollment_form.submit(crm, principal, form, "kiosk")
    return JSONResponse({"enrolled": True}, status_code=201)
