"""Device screens: a `kiosk` or `pos` device's key opens its one screen in this browser.

The kiosk shows one screen -- welcome, then the enrollment form -- with no navigation;
every other console page sends a kiosk browser back to it (`console.staff`). The till
(`web.till`) is the same kind of screen for face checkout. The cookie is a signed device
session (`api.device_session`) naming the device and a tag of its key, HttpOnly and
SameSite=Strict like the staff session; revoking the device or rotating its key ends it.
Enrollments are charged to the device's identification budget (the duplicate check
answers "is this face enrolled?").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from facecrm.api import device_session
from facecrm.api.deps import CrmDep, SessionDep, SettingsDep
from facecrm.api.device_session import DeviceSession
from facecrm.api.problems import ApiError
from facecrm.config import Settings
from facecrm.crm import kiosk
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import LoginFailedError
from facecrm.crm.models import DeviceKind
from facecrm.web import enrollment_form
from facecrm.web.console import KIOSK_COOKIE, check_csrf, render

router = APIRouter(prefix="/console/kiosk", include_in_schema=False)


class DeviceLoginRequired(Exception):
    """A device screen needs its device session: show that screen's log-in."""

    def __init__(self, login: str) -> None:
        super().__init__(login)
        self.login = login


@dataclass(frozen=True, slots=True)
class DeviceScreen:
    """What differs between the kiosk and the till: the kind of key, the cookie, the URL."""

    kind: DeviceKind
    name: str  # as the log-in page says it ("kiosk", "till")
    home: str  # the screen's URL; its log-in is `home + "/login"`
    cookie: str
    cookie_path: str  # the kiosk's stays in the console; the till's reaches the payment API
    csrf_bound: bool  # the session carries its own CSRF token (for the API: a till)

    @property
    def login(self) -> str:
        return f"{self.home}/login"


KIOSK = DeviceScreen(DeviceKind.KIOSK, "kiosk", "/console/kiosk", KIOSK_COOKIE, "/console", False)


def screen_session(
    screen: DeviceScreen, request: Request, session: SessionDep, settings: Settings
) -> tuple[Principal, DeviceSession]:
    """The device and session of this browser's `screen` cookie, else its log-in page."""
    token = request.cookies.get(screen.cookie)
    found = device_session.read(settings, token, screen.kind) if token else None
    principal = (
        kiosk.principal_for(session, found.device_id, found.tag, screen.kind) if found else None
    )
    if found is None or principal is None:
        raise DeviceLoginRequired(screen.login)
    return principal, found


def login_page(screen: DeviceScreen, request: Request) -> Response:
    response = render(request, "kiosk_login.html", None, screen=screen, error=None)
    response.delete_cookie(screen.cookie, path=screen.cookie_path)  # one that no longer works
    return response


def log_in(
    screen: DeviceScreen,
    request: Request,
    key: str,
    csrf: str,
    session: SessionDep,
    settings: Settings,
) -> Response:
    """A device key → a device session in this browser (audited by `crm.kiosk`)."""
    check_csrf(request, csrf)
    try:
        principal, tag = kiosk.open_session(session, key.strip(), screen.kind)
    except LoginFailedError as exc:
        error = f"Not a valid {screen.name} key."
        response = render(request, "kiosk_login.html", None, screen=screen, error=error)
        response.status_code = exc.status
        return response
    bound = secrets.token_urlsafe(24) if screen.csrf_bound else ""
    response = RedirectResponse(screen.home, status_code=303)
    response.set_cookie(
        screen.cookie,
        device_session.issue(settings, screen.kind, principal.id, tag, bound),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=device_session.SESSION_DAYS * 86400,
        path=screen.cookie_path,
    )
    return response


def add_login_routes(router: APIRouter, screen: DeviceScreen) -> None:
    """`GET` and `POST` `/login` on the screen's router: its log-in page and form."""

    @router.get("/login", response_class=HTMLResponse)
    def device_login_page(request: Request) -> Response:
        return login_page(screen, request)

    @router.post("/login")
    def device_login(
        request: Request,
        key: Annotated[str, Form(max_length=200)],
        session: SessionDep,
        settings: SettingsDep,
        csrf: Annotated[str, Form(max_length=100)] = "",
    ) -> Response:
        return log_in(screen, request, key, csrf, session, settings)


def kiosk_device(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    return screen_session(KIOSK, request, session, settings)[0]


Kiosk = Annotated[Principal, Depends(kiosk_device)]
add_login_routes(router, KIOSK)  # audited as `kiosk_login`


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
