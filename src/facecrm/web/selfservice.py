"""Self-enrollment and the personal page on the customer's own phone (`/self/...`).

The routes only translate: the rules are `crm.selfservice`'s. The personal session is a
signed cookie (`facecrm_self`, HttpOnly, SameSite=Strict, path `/self`) under its own
key, so a staff token is no personal session and a personal session opens no staff page;
it names one customer and nothing in a URL or form can name another. Its state-changing
forms carry a token derived from the cookie (CSRF), the flow's forms a signed nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

import jwt
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from facecrm.api.deps import SessionDep
from facecrm.api.problems import ApiError
from facecrm.api.schemas import ExportOut
from facecrm.api.uploads import read_image_upload
from facecrm.config import Settings
from facecrm.crm import selfservice
from facecrm.crm.models import Purpose
from facecrm.crm.selfservice import SelfEnrollment, SelfService, SelfSession
from facecrm.keys import derived_key
from facecrm.vision.quality import REASONS
from facecrm.web import enrollment_form
from facecrm.web.console import Staff, templates
from facecrm.web.qr import qr_svg

COOKIE = "facecrm_self"
router = APIRouter(prefix="/self", include_in_schema=False)
console_router = APIRouter(prefix="/console", include_in_schema=False)


class SelfLoginRequired(Exception):
    """The personal page needs a personal session (none, expired, or the customer erased)."""


def service(request: Request) -> SelfService:
    found: SelfService = request.app.state.selfservice
    return found


Service = Annotated[SelfService, Depends(service)]


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _key(settings: Settings) -> bytes:
    return derived_key(settings, "self-service-session")


def _issue(settings: Settings, me: SelfSession) -> str:
    now = datetime.now(UTC)
    claims = {
        "typ": "self",
        "sub": me.customer_id,
        "store": me.store_id,
        "tag": me.tag,
        "iat": now,
        "exp": now + timedelta(minutes=settings.self_session_minutes),
    }
    return jwt.encode(claims, _key(settings), algorithm="HS256")


def current(request: Request, svc: Service) -> SelfSession:
    """The customer of this browser's personal session, or `SelfLoginRequired`."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SelfLoginRequired
    try:
        claims = jwt.decode(
            token, _key(svc.settings), algorithms=["HS256"], options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError:
        raise SelfLoginRequired from None
    sub, store, tag = claims.get("sub"), claims.get("store"), claims.get("tag")
    if claims.get("typ") != "self" or not all(isinstance(v, str) for v in (sub, store, tag)):
        raise SelfLoginRequired
    me = svc.resume(str(sub), str(store), str(tag))
    if me is None:
        raise SelfLoginRequired
    return me


Me = Annotated[SelfSession, Depends(current)]


def _csrf(request: Request, svc: SelfService) -> str:
    """The personal page's form token: a keyed hash of the session cookie (a page of
    another site cannot read the cookie, so it cannot make the token)."""
    cookie = request.cookies.get(COOKIE, "")
    return hmac.new(_key(svc.settings), f"csrf:{cookie}".encode(), hashlib.sha256).hexdigest()


def _check_csrf(request: Request, svc: SelfService, submitted: str) -> None:
    if not hmac.compare_digest(_csrf(request, svc), submitted):
        raise ApiError(403, "the form has expired; reload the page", reason="bad_form")


def _with_session(
    response: Response, request: Request, svc: SelfService, me: SelfSession
) -> Response:
    response.set_cookie(
        COOKIE,
        _issue(svc.settings, me),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=svc.settings.self_session_minutes * 60,
        path="/self",
    )
    return response


def _page(request: Request, name: str, **context: object) -> Response:
    response = templates.TemplateResponse(request, name, context)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the personal page (before /{token}: "me" is no token) ---------------------------------


@router.get("/me", response_class=HTMLResponse)
def personal_page(request: Request, svc: Service, me: Me) -> Response:
    held = svc.held(me)
    purposes = [c["purpose"] for c in held.consents if c["active"]]
    return _page(request, "self_me.html", held=held, purposes=purposes, csrf=_csrf(request, svc))


@router.get("/me/export")
def export(svc: Service, me: Me) -> Response:
    """Everything held, as the JSON file staff would hand over (plus the incentive)."""
    found, incentive = svc.export(me)
    body = ExportOut.model_validate(found).model_dump(mode="json")
    body["incentive"] = (
        {
            "text": incentive.text,
            "points": incentive.points,
            "granted_at": incentive.granted_at.isoformat(),
        }
        if incentive is not None
        else None
    )
    return Response(
        json.dumps(body, ensure_ascii=False, indent=1),
        media_type="application/json",
        headers={
            "Content-Disposition": 'attachment; filename="my-data.json"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/me/withdraw")
def withdraw(
    request: Request,
    svc: Service,
    me: Me,
    purpose: Annotated[Purpose, Form()],
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    _check_csrf(request, svc, csrf)
    svc.withdraw(_address(request), me, purpose)
    return RedirectResponse("/self/me?withdrawn=" + purpose.value, status_code=303)


@router.get("/me/erase", response_class=HTMLResponse)
def erase_page(request: Request, svc: Service, me: Me) -> Response:
    return _page(request, "self_erase.html", csrf=_csrf(request, svc))


@router.post("/me/erase")
def erase(
    request: Request,
    svc: Service,
    me: Me,
    confirm: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Erase everything; the session ends with the customer."""
    _check_csrf(request, svc, csrf)
    if confirm != "erase":
        raise ApiError(422, "tick the box to confirm the erasure", reason="not_confirmed")
    svc.erase(_address(request), me)
    response = _page(request, "self_erased.html")
    response.delete_cookie(COOKIE, path="/self")
    return response


@router.post("/me/logout")
def logout() -> Response:
    response = RedirectResponse("/self/bye", status_code=303)
    response.delete_cookie(COOKIE, path="/self")
    return response


@router.get("/bye", response_class=HTMLResponse)
def bye(request: Request) -> Response:
    return _page(request, "self_erased.html", signed_out=True)


# -- the flow behind a store's QR code ------------------------------------------------------


@router.get("/{token}", response_class=HTMLResponse)
def landing(request: Request, token: str, svc: Service, lang: str | None = None) -> Response:
    """Consent text in the customer's language, the incentive, the selfie and the code."""
    page = svc.landing(token[:80], request.headers.get("accept-language", "")[:500], lang)
    texts = enrollment_form.text_rows(page.texts)
    return _page(
        request,
        "self_enroll.html",
        token=token,
        page=page,
        texts=texts,
        nonce=svc.form_nonce(page.store_id),
    )


@router.get("/{token}/signin", response_class=HTMLResponse)
def signin_page(request: Request, token: str, svc: Service) -> Response:
    store_id, store_name = svc.store(token[:80])
    return _page(
        request,
        "self_signin.html",
        token=token,
        store_name=store_name,
        nonce=svc.form_nonce(store_id),
    )


@router.post("/{token}/check")
def check_photo(
    request: Request, token: str, svc: Service, image: Annotated[UploadFile, File()]
) -> dict[str, object]:
    """Live feedback on a selfie: whether it passes the kiosk's quality gate, and why not."""
    svc.store(token[:80])  # an unknown link is a 404 before any photo is read
    reason = svc.check_photo(_address(request), lambda: read_image_upload(image, svc.settings))
    return {"ok": reason is None, "reason": reason, "message": REASONS.get(reason or "", "")}


@router.post("/{token}/code")
def send_code(
    request: Request,
    token: str,
    svc: Service,
    contact: Annotated[str, Form(min_length=1, max_length=320)],
    nonce: Annotated[str, Form(max_length=1000)] = "",
    purpose: Annotated[str, Form(max_length=10)] = "enroll",
) -> dict[str, object]:
    challenge = svc.send_code(_address(request), token[:80], contact, purpose, nonce)
    return {"challenge": challenge, "expires_in": int(selfservice.CODE_TTL.total_seconds())}


@router.post("/{token}/enroll")
def enroll(
    request: Request,
    token: str,
    svc: Service,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    contact: Annotated[str, Form(min_length=1, max_length=320)],
    challenge: Annotated[str, Form(min_length=1, max_length=64)],
    code: Annotated[str, Form(min_length=1, max_length=12)],
    text_id: Annotated[int, Form(ge=1, le=2**31 - 1)],
    image: Annotated[UploadFile, File()],
    nonce: Annotated[str, Form(max_length=1000)] = "",
    consent: Annotated[bool, Form()] = False,
    show_photo: Annotated[bool, Form()] = False,
    age_confirmed: Annotated[int | None, Form(ge=0, le=150)] = None,
) -> Response:
    """The last step: the code, the consent on the text shown, and the selfie."""
    form = SelfEnrollment(
        name, contact, challenge, code, text_id, consent, show_photo, age_confirmed
    )
    picture = read_image_upload(image, svc.settings)
    me = svc.enroll(_address(request), token[:80], form, picture, nonce)
    response = JSONResponse({"enrolled": True, "url": "/self/me"}, status_code=201)
    return _with_session(response, request, svc, me)


@router.post("/{token}/signin")
def signin(
    request: Request,
    token: str,
    svc: Service,
    contact: Annotated[str, Form(min_length=1, max_length=320)],
    challenge: Annotated[str, Form(min_length=1, max_length=64)],
    code: Annotated[str, Form(min_length=1, max_length=12)],
    nonce: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    me = svc.sign_in(_address(request), token[:80], contact, challenge, code, nonce)
    response = JSONResponse({"url": "/self/me"})
    return _with_session(response, request, svc, me)


@console_router.get("/stores/{store_id}/self-service.svg")
def store_qr(request: Request, store_id: str, session: SessionDep, principal: Staff) -> Response:
    """The store's self-enrollment QR code, to print for its entrance (admins; the link
    is made on first use and audited)."""
    _, token = selfservice.link(session, principal, store_id)
    url = str(request.base_url).rstrip("/") + f"/self/{token}"
    return Response(qr_svg(url), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})
