"""The till: a `pos` device's key opens the face-checkout screen in this browser.

The screen (`static/till.js`) runs the protocol of docs/face-checkout.md against the JSON
API itself, with the till's device session (`api.device_session`): the cookie reaches the
payment routes and every call carries the session's CSRF token, so the device key never
sits in the page. Like the kiosk, the screen has no navigation, and the staff console
sends a till browser back to it. The customer's name is never on it: the cashier's screen
faces the queue, and the payment API answers no name to a till anyway.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from facecrm.api.deps import SessionDep, SettingsDep
from facecrm.api.device_session import TILL_COOKIE
from facecrm.crm.models import DeviceKind
from facecrm.web.console import render
from facecrm.web.kiosk import DeviceScreen, add_login_routes, screen_session

TILL = DeviceScreen(DeviceKind.POS, "till", "/console/till", TILL_COOKIE, "/", True)
DEFAULT_CURRENCY = "EUR"  # what the amount field starts with; the cashier may change it
router = APIRouter(prefix=TILL.home, include_in_schema=False)
add_login_routes(router, TILL)  # a `pos` key only; audited as `till_login`


@router.get("", response_class=HTMLResponse)
def till_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Amount entry, camera, smile prompt, keypad, result; "pay another way" always."""
    principal, found = screen_session(TILL, request, session, settings)
    return render(
        request,
        "till.html",
        None,
        csrf=found.csrf,  # the session's own token: the API checks this one
        till=principal.name[:40] or "till",
        currency=DEFAULT_CURRENCY,
    )
