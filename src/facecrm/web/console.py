"""The staff console: server-rendered pages over the same services as the API.

Log-in sets the staff token in an HttpOnly, SameSite=Strict cookie. Every
state-changing request must also carry the CSRF token (double submit: the
`facecrm_csrf` cookie must equal the form field or `X-CSRF-Token` header).
"""

from __future__ import annotations

import secrets
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from facecrm.api.deps import (
    AlertsDep,
    CrmDep,
    SessionDep,
    SettingsDep,
    charge_identification,
    principal_for_token,
    still_valid,
)
from facecrm.api.device_session import TILL_COOKIE
from facecrm.api.login import log_in, log_out
from facecrm.api.problems import ApiError
from facecrm.api.routes.agent import sse
from facecrm.api.schemas import (
    AcknowledgedOut,
    AlertOut,
    AuditEventOut,
    CardOut,
    CustomerSummary,
    RowId,
)
from facecrm.api.uploads import read_image_upload
from facecrm.crm import auditlog, cards, customers, disputes
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import InvalidError, LoginFailedError, LoginThrottledError
from facecrm.web import enrollment_form

SESSION_COOKIE = "facecrm_session"
CSRF_COOKIE = "facecrm_csrf"
KIOSK_COOKIE = "facecrm_kiosk"  # a kiosk browser: see `facecrm.web.kiosk`
STATIC_DIR = Path(str(resources.files("facecrm.web") / "static"))
templates = Jinja2Templates(directory=str(resources.files("facecrm.web") / "templates"))
router = APIRouter(prefix="/console", include_in_schema=False)


class LoginRequired(Exception):
    """The page needs a logged-in staff user: redirect to the log-in page."""


class KioskOnly(Exception):
    """A device screen's browser (kiosk, till) asked for another page: back to its screen
    (no navigation)."""

    def __init__(self, home: str = "/console/kiosk") -> None:
        super().__init__(home)
        self.home = home


def staff(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    if request.cookies.get(KIOSK_COOKIE):
        raise KioskOnly
    if request.cookies.get(TILL_COOKIE):
        raise KioskOnly("/console/till")
    token = request.cookies.get(SESSION_COOKIE)
    principal = principal_for_token(session, settings, token) if token else None
    if principal is None:
        raise LoginRequired
    return principal


Staff = Annotated[Principal, Depends(staff)]


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not secrets.compare_digest(expected, submitted):
        raise ApiError(403, "the form has expired or did not come from this console; reload it")


def _json(model: type[BaseModel], value: object) -> dict[str, Any]:
    """What the API would answer for `value` (pages render the same data as the API)."""
    return model.model_validate(value).model_dump(mode="json")


def render(request: Request, name: str, principal: Principal | None, **context: Any) -> Response:
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, name, {"principal": principal, "csrf": csrf, **context}
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            httponly=False,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/console",
        )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    if request.cookies.get(KIOSK_COOKIE):
        raise KioskOnly
    return render(request, "login.html", None, error=None)


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=100)],
    password: Annotated[str, Form(max_length=200)],
    crm: CrmDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(request, csrf)
    address = request.client.host if request.client else "?"
    try:
        done = log_in(crm, request.app.state.login_guard, username, password, address, "console")
    except LoginThrottledError as exc:
        message = f"Too many failed log-ins. Try again in {exc.retry_after} seconds."
        response = render(request, "login.html", None, error=message)
        response.status_code = exc.status
        response.headers.update(exc.headers())
        return response
    except LoginFailedError as exc:
        response = render(request, "login.html", None, error="Wrong username or password.")
        response.status_code = exc.status
        return response
    response = RedirectResponse("/console/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        done.token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=crm.settings.token_minutes * 60,
    )
    return response


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Revoke this browser's session token server-side (a copied cookie stops working);
    the user's sessions on other devices stay logged in."""
    check_csrf(request, csrf)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        log_out(session, settings, token)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def home(principal: Staff) -> Response:
    first = "/console/customers" if principal.can(Permission.CUSTOMERS_READ) else "/console/audit"
    return RedirectResponse(first, status_code=303)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, crm: CrmDep, session: SessionDep, principal: Staff) -> Response:
    """The audit trail (auditors, admins) with the result of the chain check."""
    principal.require(Permission.AUDIT_READ)
    report = crm.verify_audit()
    rows = [_json(AuditEventOut, e) for e in auditlog.latest(session, principal, "console")]
    return render(request, "audit.html", principal, rows=rows, report=report)


@router.get("/customers", response_class=HTMLResponse)
def customer_search(
    request: Request, session: SessionDep, principal: Staff, q: str = ""
) -> Response:
    principal.require(Permission.CUSTOMERS_READ)
    found = customers.find(session, principal, q[:200], limit=50, channel="console")
    rows = [_json(CustomerSummary, c) for c in found]
    return render(request, "customers.html", principal, q=q, customers=rows)


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
def customer_card(
    request: Request, customer_id: str, session: SessionDep, principal: Staff
) -> Response:
    principal.require(Permission.CUSTOMERS_READ)
    c = _json(CardOut, cards.card(session, principal, customer_id))
    return render(request, "card.html", principal, c=c)


@router.get("/customers/{customer_id}/photo")
def customer_photo(customer_id: str, crm: CrmDep, principal: Staff) -> Response:
    jpeg = crm.view_photo(principal, customer_id, channel="console")
    if jpeg is None:
        raise ApiError(404, "no photo to show for this customer")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, service: AlertsDep, principal: Staff) -> Response:
    principal.require(Permission.ALERTS)
    alerts = [_json(AlertOut, a) for a in service.open_alerts(principal)]
    return render(request, "alerts.html", principal, alerts=alerts)


HISTORY_PAGE = 25


@router.get("/alerts/history", response_class=HTMLResponse)
def alerts_history(
    request: Request,
    service: AlertsDep,
    principal: Staff,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Greeted, dismissed and disputed alerts, a page at a time (one more tells if older)."""
    principal.require(Permission.ALERTS)
    found = service.history(principal, limit=HISTORY_PAGE + 1, offset=(page - 1) * HISTORY_PAGE)
    alerts = [_json(AlertOut, a) for a in found[:HISTORY_PAGE]]
    more = len(found) > HISTORY_PAGE
    return render(request, "alerts_history.html", principal, alerts=alerts, page=page, more=more)


@router.get("/alerts/stream")
def alerts_stream(request: Request, crm: CrmDep, principal: Staff) -> Response:
    """Live alerts; the stream holds no database session (see `deps.still_valid`)."""
    principal.require(Permission.ALERTS)
    alive = still_valid(crm, principal, token=request.cookies.get(SESSION_COOKIE))
    return sse(request.app.state.alerts.bus, principal, request, alive)


@router.post("/alerts/{alert_id}/{action}")
def alert_action(
    request: Request, alert_id: RowId, action: str, service: AlertsDep, principal: Staff
) -> dict[str, object]:
    check_csrf(request, request.headers.get("x-csrf-token"))
    principal.require(Permission.ALERTS)
    if action == "claim":
        return _json(AlertOut, service.claim(principal, alert_id))
    if action == "ack":
        return _json(AcknowledgedOut, service.acknowledge(principal, alert_id))
    if action == "dismiss":
        return _json(AlertOut, service.dismiss(principal, alert_id))
    if action == "dispute":
        return _json(AlertOut, service.dispute(principal, alert_id))
    raise ApiError(404, "unknown action")


@router.get("/lookup", response_class=HTMLResponse)
def lookup_page(request: Request, principal: Staff) -> Response:
    principal.require(Permission.IDENTIFY)
    return render(request, "lookup.html", principal)


@router.post("/lookup")
def lookup(
    request: Request,
    image: Annotated[UploadFile, File()],
    crm: CrmDep,
    session: SessionDep,
    principal: Staff,
) -> Response:
    """An associate's phone photo → the opted-in customer's card, or nothing at all."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    principal.require(Permission.IDENTIFY)
    charge_identification(request, principal)  # the same budget as the API's identify
    picture = read_image_upload(image, crm.settings)
    results = crm.identify(picture, principal=principal, purpose="phone_lookup", max_faces=1)
    if not results or results[0].match is None:
        return JSONResponse({"found": False, "message": "No opted-in customer."})
    customer_id = results[0].match.customer_id
    found = _json(CardOut, cards.card(session, principal, customer_id))
    store_id = min(principal.stores) if principal.stores else None  # as crm.identify's
    ref = disputes.lookup_ref(
        crm.settings, principal, customer_id, results[0].match.similarity, store_id
    )
    return JSONResponse(
        {
            "found": True,
            "url": f"/console/customers/{customer_id}",
            "card": found,
            "dispute_ref": ref,  # for "Not this person" (None: no store to report it to)
        }
    )


class DisputeIn(BaseModel):
    ref: str = Field(min_length=1, max_length=400)


@router.post("/lookup/dispute")
def lookup_dispute(
    request: Request, body: DisputeIn, crm: CrmDep, session: SessionDep, principal: Staff
) -> dict[str, object]:
    """ "Not this person" on the look-up's answer: recorded for the store's dispute report."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    dispute = disputes.dispute_lookup(session, principal, crm.settings, body.ref, crm.threshold)
    return {"disputed": True, "customer_id": dispute.customer_id}


@router.get("/enroll", response_class=HTMLResponse)
def enroll_page(
    request: Request, session: SessionDep, principal: Staff, store: str | None = None
) -> Response:
    """The enrollment form: every translation of the current consent text (the store's
    language first), and the fields and age confirmation the store asks for."""
    principal.require(Permission.CUSTOMERS_WRITE)
    store_id = enrollment_form.store_of(principal, store)
    form = enrollment_form.context(session, principal, store_id)
    stores = sorted(principal.stores) if principal.stores else []
    return render(request, "enroll.html", principal, stores=stores, **form)


@router.post("/enroll")
def enroll(
    request: Request,
    form: enrollment_form.EnrollFormDep,
    channel: Annotated[str, Form(max_length=20)] = "associate",
    *,
    crm: CrmDep,
    principal: Staff,
) -> Response:
    """Create the customer, the consent as shown, and the template: all or nothing."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    principal.require(Permission.CUSTOMERS_WRITE)
    charge_identification(request, principal)  # its duplicate check answers "enrolled?"
    if channel not in {"kiosk", "associate", "phone"}:
        raise InvalidError("unknown channel", reason="bad_channel")
    customer = enrollment_form.submit(crm, principal, form, channel)
    return JSONResponse(
        {"customer_id": customer.id, "url": f"/console/customers/{customer.id}"}, status_code=201
    )
