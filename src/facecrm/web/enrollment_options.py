"""Console pages for the enrollment options (`crm.enrollment`): the chain's defaults and each
store's overrides -- the consent text's language shown first, whether the form asks for a
phone number and a tier, the minimum-age confirmation and the kiosk's idle reset.

Administrators edit the chain (`chain` in the URL, `*` in the API) and every store;
managers edit their own stores and see the chain's values they inherit. Every field may be
left to "inherit"; the page only translates the form, `enrollment.configure` validates and
audits, and a refused form is shown again with the reason (422) having written nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from facecrm.api.deps import SessionDep
from facecrm.api.schemas import StoreOut
from facecrm.crm import accounts, consent_text, enrollment
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import Purpose
from facecrm.web.admin import _change, _page, _stores
from facecrm.web.console import Staff, _json, check_csrf

router = APIRouter(prefix="/console/enrollment-options", include_in_schema=False)
CHAIN_PATH = "chain"  # `*` is the API's name for the chain; a plain word reads better in a URL


def _scope(path: str) -> str:
    return enrollment.CHAIN if path == CHAIN_PATH else path


def _inherited(session: Session, scope: str) -> enrollment.Options:
    """What a field left to "inherit" gets: the chain's for a store, the product's default
    for the chain."""
    return (
        enrollment.Options() if scope == enrollment.CHAIN else enrollment.effective(session, None)
    )


@router.get("", response_class=HTMLResponse)
def options_list(request: Request, session: SessionDep, principal: Staff) -> Response:
    """The chain's options (admins) and every store of the user's, as in force."""
    principal.require(Permission.ENROLLMENT_CONFIG)
    rows: list[dict[str, Any]] = []
    if principal.stores is None:
        rows.append(
            {
                "path": CHAIN_PATH,
                "code": "Chain",
                "name": "defaults of every store",
                "options": enrollment.effective(session, None),
            }
        )
    rows += (
        {**store, "path": store["id"], "options": enrollment.effective(session, store["id"])}
        for store in _stores(session, principal)
    )
    return _page(request, "enrollment_options.html", principal, rows=rows)


def _edit_page(
    request: Request,
    session: Session,
    principal: Principal,
    path: str,
    status: int = 200,
    **outcome: Any,
) -> Response:
    scope = _scope(path)
    set_here = enrollment.overrides(session, principal, scope)  # permission and scope checks
    store = (
        None if scope == enrollment.CHAIN else _json(StoreOut, accounts.get_store(session, scope))
    )
    languages = sorted(
        {
            t.language
            for t in consent_text.list_texts(
                session, principal, Purpose.IN_STORE_RECOGNITION, active_only=True
            )
        }
        | ({str(set_here["language"])} if set_here["language"] else set())
    )
    return _page(
        request,
        "enrollment_options_edit.html",
        principal,
        status,
        path=path,
        store=store,
        set_here=set_here,
        inherited=_inherited(session, scope),
        in_force=enrollment.effective(session, None if store is None else scope),
        languages=languages,
        max_age=enrollment.MAX_AGE,
        idle_bounds=enrollment.IDLE_BOUNDS,
        **outcome,
    )


@router.get("/{path}", response_class=HTMLResponse)
def edit_page(request: Request, path: str, session: SessionDep, principal: Staff) -> Response:
    return _edit_page(request, session, principal, path[:32])


def _form_value(name: str, raw: str) -> object:
    """A form field as `configure` input: empty is "inherit" (None), a yes/no choice a
    bool, a number an int; anything else is passed on as typed, for `configure` to refuse
    with the option's name and bounds."""
    raw = raw.strip()
    if not raw:
        return None
    if name in {"ask_phone", "ask_tier"}:
        return {"yes": True, "no": False}.get(raw, raw)
    if name in {"min_age", "kiosk_idle_seconds"}:
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


@router.post("/{path}")
def save(
    request: Request,
    path: str,
    session: SessionDep,
    principal: Staff,
    language: Annotated[str, Form(max_length=16)] = "",
    ask_phone: Annotated[str, Form(max_length=10)] = "",
    ask_tier: Annotated[str, Form(max_length=10)] = "",
    min_age: Annotated[str, Form(max_length=10)] = "",
    kiosk_idle_seconds: Annotated[str, Form(max_length=10)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Every field of the scope at once (the form states the whole scope)."""
    check_csrf(request, csrf)
    path = path[:32]
    typed = {
        "language": language,
        "ask_phone": ask_phone,
        "ask_tier": ask_tier,
        "min_age": min_age,
        "kiosk_idle_seconds": kiosk_idle_seconds,
    }
    values = {name: _form_value(name, raw) for name, raw in typed.items()}
    _, error, status = _change(
        session, lambda s: enrollment.configure(s, principal, _scope(path), values)
    )
    if error is not None:
        # only a refused value (422) reaches the form again: `_edit_page` repeats the
        # permission and scope checks, so another store or an unknown one is a problem as usual
        return _edit_page(request, session, principal, path, status, error=error)
    return _edit_page(request, session, principal, path, notice="Enrollment options saved.")
