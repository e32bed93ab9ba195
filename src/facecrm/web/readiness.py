"""The console's set-up check: each store's readiness, confirmed item by item by an admin.

A banner on every console page names the signed-in user's stores that are not ready
(`base.html` calls `not_ready_stores`); the page lists the items with what is in force
and what was confirmed, with a "Confirm" button for administrators.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from facecrm.api.deps import SessionDep, SettingsDep
from facecrm.api.routes.readiness import Item, readiness_out
from facecrm.crm import accounts, readiness
from facecrm.crm.authz import Permission, Principal
from facecrm.web.console import Staff, check_csrf, render, templates

router = APIRouter(prefix="/console", include_in_schema=False)


def not_ready_stores(request: Request, principal: Principal | None) -> list[str]:
    """Codes of the principal's stores that are not ready (for the banner; no audit: it
    names stores, not people)."""
    if principal is None:
        return []
    crm = request.app.state.crm
    return readiness.banner(crm.sessions, principal, crm.settings)


templates.env.globals["not_ready_stores"] = not_ready_stores


@router.get("/readiness", response_class=HTMLResponse)
def readiness_list(
    request: Request, session: SessionDep, settings: SettingsDep, principal: Staff
) -> Response:
    """Every store the user works in, ready or not."""
    stores = [s for s in accounts.list_stores(session, principal) if principal.may_act_in(s.id)]
    rows = [
        {
            "id": s.id,
            "code": s.code,
            "name": s.name,
            "ready": readiness.status(session, principal, settings, s.id).ready,
        }
        for s in stores
    ]
    return render(request, "readiness_list.html", principal, stores=rows)


@router.get("/stores/{store_id}/readiness", response_class=HTMLResponse)
def readiness_page(
    request: Request, store_id: str, session: SessionDep, settings: SettingsDep, principal: Staff
) -> Response:
    state = readiness.status(session, principal, settings, store_id)
    store = accounts.get_store(session, store_id)
    return render(
        request,
        "readiness.html",
        principal,
        store={"id": store.id, "code": store.code, "name": store.name},
        state=readiness_out(state, settings.require_store_readiness).model_dump(mode="json"),
        can_confirm=principal.can(Permission.STORES_WRITE),
    )


@router.post("/stores/{store_id}/readiness/{item}")
def readiness_confirm(
    request: Request,
    store_id: str,
    item: Item,
    session: SessionDep,
    settings: SettingsDep,
    principal: Staff,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(request, csrf)
    readiness.confirm(session, principal, settings, store_id, item)
    return RedirectResponse(f"/console/stores/{store_id}/readiness", status_code=303)
