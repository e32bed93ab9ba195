"""Device sessions in a browser: the signed cookie a kiosk's or a till's key opens.

The console's device log-in (`web.kiosk`) issues it; it names the device, a tag of its key
hash (`crm.kiosk`: revoking or rotating the key ends the session) and, for a till, the
session's CSRF token. A till's page calls the payment routes with this session, so the
device key never sits in the page's JavaScript: the API accepts the till cookie on
`/pay/...` only, and only with that token in `X-CSRF-Token` (the console's header).
The token is bound to the session rather than to the console's `facecrm_csrf` cookie,
which lives under `/console` and never reaches the API.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from fastapi import Request
from sqlalchemy.orm import Session

from facecrm.api.problems import ApiError
from facecrm.config import API_PREFIX, Settings
from facecrm.crm import kiosk
from facecrm.crm.authz import Principal
from facecrm.crm.models import DeviceKind
from facecrm.keys import server_secret

SESSION_DAYS = 30  # a kiosk or till stays set up; revoke the device to end it sooner
TILL_COOKIE = "facecrm_till"  # path "/": the till's page and the payment API both read it
PAY_PATHS = f"{API_PREFIX}/pay/"  # the only API routes a till's browser session opens
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class DeviceSession:
    device_id: str
    tag: str  # `crm.kiosk.TAG_LENGTH` characters of the device's key hash
    csrf: str  # "" for a kiosk (its page posts to the console, which checks its own)


def issue(settings: Settings, kind: DeviceKind, device_id: str, tag: str, csrf: str = "") -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": device_id,
        "tag": tag,
        "typ": kind.value,
        "csrf": csrf,
        "iat": now,
        "exp": now + timedelta(days=SESSION_DAYS),
    }
    return jwt.encode(claims, server_secret(settings), algorithm="HS256")


def read(settings: Settings, token: str, kind: DeviceKind) -> DeviceSession | None:
    """The session of a well-signed, unexpired token of a `kind` device, else None (the
    device itself is checked by `crm.kiosk.principal_for`)."""
    try:
        claims = jwt.decode(
            token,
            server_secret(settings),
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "typ"]},
        )
    except jwt.PyJWTError:
        return None
    sub, tag, csrf = claims.get("sub"), claims.get("tag"), claims.get("csrf", "")
    if claims.get("typ") != kind.value:
        return None
    if not isinstance(sub, str) or not isinstance(tag, str) or not isinstance(csrf, str):
        return None
    return DeviceSession(sub, tag, csrf)


def till_principal(request: Request, session: Session, settings: Settings) -> Principal | None:
    """The till of a payment-API request made with a till's browser session; None when the
    request has no such cookie or is not for a payment route. A cookie that no longer
    works is 401, a missing or wrong CSRF token 403 (a cookie alone never acts)."""
    token = request.cookies.get(TILL_COOKIE)
    if not token or not request.url.path.startswith(PAY_PATHS):
        return None
    found = read(settings, token, DeviceKind.POS)
    principal = (
        kiosk.principal_for(session, found.device_id, found.tag, DeviceKind.POS) if found else None
    )
    if found is None or principal is None:
        raise ApiError(401, "the till's session has ended: log the till in again")
    submitted = request.headers.get(CSRF_HEADER, "")
    if not found.csrf or not secrets.compare_digest(found.csrf, submitted):
        raise ApiError(403, "the till's request did not come from its page", reason="csrf")
    return principal
