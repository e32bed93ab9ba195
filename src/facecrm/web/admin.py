"""The console's admin and manager pages: stores, staff, devices, a store's rules and webhook.

The pages only translate: who may do what to whom is decided by `crm.accounts` and
`alerts.storeconfig` (a manager's pages show and change the associates, devices and
rules of their own stores only, because those functions refuse anything else).

Every form is a plain POST with the console's CSRF token (no script: CSP-clean). A
change runs in the request's transaction (`SessionDep`). A refused change (a
`FacecrmError`) shows the page again with the reason and the error's status, never a
500; it has written nothing, because the crm operations check everything before they
write (a refusal from a failed flush, which leaves the session unusable, is raised as a
problem instead). A device key or a webhook secret is shown in the response that made
it, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from facecrm.alerts import rules, storeconfig, webhooks
from facecrm.api.deps import CrmDep, SessionDep
from facecrm.api.schemas import (
    DeviceOut,
    EffectiveConfigOut,
    StaffStatusOut,
    StoreOut,
    WebhookDeliveryOut,
)
from facecrm.crm import accounts
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.models import Device
from facecrm.errors import FacecrmError
from facecrm.web.console import Staff, _json, check_csrf, render

router = APIRouter(prefix="/console", include_in_schema=False)
T = TypeVar("T")
Outcome = dict[str, Any]  # what a change tells the page: notice, error, secret, key


def _change(session: Session, work: Callable[[Session], T]) -> tuple[T | None, str | None, int]:
    """(result, None, 200), or (None, why, status) when the crm layer refused the change."""
    try:
        return work(session), None, 200
    except FacecrmError as exc:
        if not session.is_active:  # a failed flush: nothing more can be read or written
            raise
        return None, str(exc.detail), exc.status


def _page(
    request: Request, name: str, principal: Principal, status: int = 200, **context: Any
) -> Response:
    response = render(request, name, principal, **context)
    response.status_code = status
    return response


def _stores(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The stores the principal acts in (all of them for chain-wide roles)."""
    return [
        _json(StoreOut, s)
        for s in accounts.list_stores(session, principal)
        if principal.may_act_in(s.id)
    ]


# -- stores ---------------------------------------------------------------------------


def _stores_page(
    request: Request, session: Session, principal: Principal, status: int = 200, **outcome: Any
) -> Response:
    principal.require(Permission.STORES_READ)
    stores = _stores(session, principal)
    can_create = principal.can(Permission.STORES_WRITE)
    return _page(
        request,
        "admin_stores.html",
        principal,
        status,
        stores=stores,
        can_create=can_create,
        **outcome,
    )


@router.get("/stores", response_class=HTMLResponse)
def stores_page(request: Request, session: SessionDep, principal: Staff) -> Response:
    return _stores_page(request, session, principal)


@router.post("/stores")
def create_store(
    request: Request,
    session: SessionDep,
    principal: Staff,
    code: Annotated[str, Form(max_length=40)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(request, csrf)
    made, error, status = _change(
        session, lambda s: accounts.create_store(s, code, name, principal).code
    )
    notice = f"Store {made} created." if made else None
    return _stores_page(request, session, principal, status, error=error, notice=notice)


# -- staff ----------------------------------------------------------------------------


def _staff_page(
    request: Request, session: Session, principal: Principal, status: int = 200, **outcome: Any
) -> Response:
    if not principal.can(Permission.STAFF_WRITE):
        principal.require(Permission.STAFF_MANAGE)
    guard = request.app.state.login_guard
    staff = [_json(StaffStatusOut, v) for v in accounts.staff_views(session, principal, guard)]
    stores = _stores(session, principal)
    roles = (
        ["associate"]
        if not principal.can(Permission.STAFF_WRITE)
        else [
            "associate",
            "manager",
            "admin",
            "auditor",
        ]
    )
    codes = {s["id"]: s["code"] for s in stores}
    return _page(
        request,
        "admin_staff.html",
        principal,
        status,
        staff=staff,
        stores=stores,
        codes=codes,
        roles=roles,
        **outcome,
    )


@router.get("/staff", response_class=HTMLResponse)
def staff_page(request: Request, session: SessionDep, principal: Staff) -> Response:
    return _staff_page(request, session, principal)


@router.post("/staff")
async def create_staff(request: Request, session: SessionDep, principal: Staff) -> Response:
    """A new account; the store boxes are a list, so the form is read here."""
    form = await request.form(max_fields=200)
    check_csrf(request, _text(form.get("csrf"), 100))
    store_ids = [_text(v, 32) for v in form.getlist("store_ids")]

    def work(session: Session) -> str:
        user = accounts.create_staff(
            session,
            _text(form.get("username"), 100),
            _text(form.get("password"), 200),
            _text(form.get("role"), 20),
            store_ids,
            _text(form.get("display_name"), 200),
            principal=principal,
        )
        return user.username

    made, error, status = await run_in_threadpool(_change, session, work)
    notice = f"Account {made} created." if made else None
    return await run_in_threadpool(
        _staff_page, request, session, principal, status, error=error, notice=notice
    )


def _text(value: object, limit: int) -> str:
    """A form field as text, cut to `limit` (an upload or a missing field is empty)."""
    return value[:limit] if isinstance(value, str) else ""


@router.post("/staff/{staff_id}/{action}")
async def staff_action(
    request: Request, staff_id: str, action: str, session: SessionDep, principal: Staff
) -> Response:
    """disable, enable, password (a reset), unlock, or stores (the boxes ticked)."""
    form = await request.form(max_fields=200)
    check_csrf(request, _text(form.get("csrf"), 100))
    guard = request.app.state.login_guard
    password = _text(form.get("password"), 200)
    store_ids = [_text(v, 32) for v in form.getlist("store_ids")]
    actions: dict[str, tuple[Callable[[Session], object], str]] = {
        "disable": (
            lambda s: accounts.set_active(s, principal, staff_id, active=False),
            "disabled; their sessions have ended",
        ),
        "enable": (
            lambda s: accounts.set_active(s, principal, staff_id, active=True),
            "enabled; they log in again",
        ),
        "password": (
            lambda s: accounts.set_password(s, principal, staff_id, password),
            "has a new password; their sessions have ended",
        ),
        "unlock": (
            lambda s: accounts.unlock(s, principal, guard, staff_id),
            "may log in again",
        ),
        "stores": (
            lambda s: accounts.assign_stores(s, principal, staff_id, store_ids),
            "works in the stores ticked",
        ),
    }
    if action not in actions:
        return await run_in_threadpool(
            _staff_page, request, session, principal, 404, error="Unknown action."
        )
    work, done = actions[action]

    def act(session: Session) -> str:
        work(session)
        return accounts.find_staff(session, staff_id).username

    name, error, status = await run_in_threadpool(_change, session, act)
    notice = f"{name} {done}." if name else None
    return await run_in_threadpool(
        _staff_page, request, session, principal, status, error=error, notice=notice
    )


# -- devices --------------------------------------------------------------------------


def _devices_page(
    request: Request, session: Session, principal: Principal, status: int = 200, **outcome: Any
) -> Response:
    principal.require(Permission.DEVICES_MANAGE)
    devices = [_json(DeviceOut, d) for d in accounts.device_views(session, principal)]
    stores = _stores(session, principal)
    codes = {s["id"]: s["code"] for s in stores}
    return _page(
        request,
        "admin_devices.html",
        principal,
        status,
        devices=devices,
        stores=stores,
        codes=codes,
        **outcome,
    )


def _named(device: Device, key: str) -> tuple[str, str]:
    return device.name, key


@router.get("/devices", response_class=HTMLResponse)
def devices_page(request: Request, session: SessionDep, principal: Staff) -> Response:
    return _devices_page(request, session, principal)


@router.post("/devices")
def create_device(
    request: Request,
    session: SessionDep,
    principal: Staff,
    store_id: Annotated[str, Form(max_length=32)] = "",
    kind: Annotated[str, Form(max_length=10)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    check_csrf(request, csrf)
    made, error, status = _change(
        session,
        lambda s: _named(*accounts.create_device(s, store_id, kind, name, principal=principal)),
    )
    outcome: Outcome = {"error": error}
    if made:
        outcome.update(notice=f"Device {made[0]} created.", key=made[1], key_for=made[0])
    return _devices_page(request, session, principal, status, **outcome)


@router.post("/devices/{device_id}/{action}")
def device_action(
    request: Request,
    device_id: str,
    action: str,
    session: SessionDep,
    principal: Staff,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """rotate (a new key, shown once) or revoke (for good)."""
    check_csrf(request, csrf)
    outcome: Outcome = {}
    if action == "rotate":
        made, error, status = _change(
            session, lambda s: _named(*accounts.rotate_device_key(s, principal, device_id))
        )
        if made:
            outcome.update(notice=f"New key for {made[0]}.", key=made[1], key_for=made[0])
    elif action == "revoke":
        revoked, error, status = _change(
            session, lambda s: accounts.revoke_device(s, principal, device_id).name
        )
        if revoked:
            outcome.update(notice=f"{revoked} is revoked: its key no longer works.")
    else:
        error, status = "Unknown action.", 404
    return _devices_page(request, session, principal, status, error=error, **outcome)


# -- a store's rules and webhook ------------------------------------------------------


def _field_kind(rule: str, key: str) -> tuple[str, list[str]]:
    """How a rule's setting is edited: ("bool"|"int"|"float"|"list", the list's choices)."""
    model = rules.RuleSettings.model_fields[rule].annotation
    annotation = model.model_fields[key].annotation  # type: ignore[union-attr]
    if annotation in (bool, int, float):
        return annotation.__name__, []
    (item,) = get_args(annotation)
    return "list", [member.value for member in item]


def _store_page(
    request: Request,
    session: Session,
    principal: Principal,
    store_id: str,
    status: int = 200,
    **outcome: Any,
) -> Response:
    config = _json(EffectiveConfigOut, storeconfig.effective(session, principal, store_id))
    log = [
        _json(WebhookDeliveryOut, d) for d in storeconfig.deliveries(session, principal, store_id)
    ]
    store = _json(StoreOut, accounts.get_store(session, store_id))
    for rule in config["rules"]:
        rule["fields"] = [
            {"key": key, "value": value, "kind": _field_kind(rule["name"], key)}
            for key, value in rule["value"].items()
        ]
    return _page(
        request,
        "admin_store.html",
        principal,
        status,
        store=store,
        config=config,
        deliveries=log,
        **outcome,
    )


def _guarded(
    request: Request, session: Session, principal: Principal, store_id: str, **outcome: Any
) -> Response:
    """The store page, or the stores page with the refusal (another store, no store)."""
    try:
        status = outcome.pop("status", 200)
        return _store_page(request, session, principal, store_id, status, **outcome)
    except FacecrmError as exc:
        return _stores_page(request, session, principal, exc.status, error=str(exc.detail))


@router.get("/stores/{store_id}", response_class=HTMLResponse)
def store_page(request: Request, store_id: str, session: SessionDep, principal: Staff) -> Response:
    return _guarded(request, session, principal, store_id)


def _rule_values(form: Any) -> dict[str, dict[str, object]]:
    """The rules form as `RuleSettings` input: every setting of every rule, so the store
    states its whole configuration (stored as differences from the defaults)."""
    values: dict[str, dict[str, object]] = {}
    for rule, defaults in rules.DEFAULT_RULES.items():
        values[rule] = {}
        for key in defaults:
            kind, _ = _field_kind(rule, key)
            name = f"{rule}.{key}"
            if kind == "bool":
                values[rule][key] = form.get(name) == "on"
            elif kind in ("int", "float"):
                values[rule][key] = _number(_text(form.get(name), 20).strip(), kind)
            else:
                values[rule][key] = [_text(v, 40) for v in form.getlist(name)]
    return values


def _number(raw: str, kind: str) -> object:
    """The number typed, or the text itself (then refused by the rules' validation with
    the setting's name, like any other bad value)."""
    try:
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        return raw


@router.post("/stores/{store_id}/rules")
async def save_rules(
    request: Request, store_id: str, session: SessionDep, principal: Staff
) -> Response:
    form = await request.form(max_fields=200)
    check_csrf(request, _text(form.get("csrf"), 100))
    values = _rule_values(form)
    done, error, status = await run_in_threadpool(
        _change,
        session,
        lambda s: storeconfig.set_rules(s, principal, store_id, values, only_changes=True),
    )
    notice = "Rules saved." if done else None
    return await run_in_threadpool(
        lambda: _guarded(
            request, session, principal, store_id, status=status, error=error, notice=notice
        )
    )


@router.post("/stores/{store_id}/webhook/{action}")
def webhook_action(
    request: Request,
    store_id: str,
    action: str,
    crm: CrmDep,
    session: SessionDep,
    principal: Staff,
    url: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """url (set or remove, with a new secret), secret (rotate) or test (send an event)."""
    check_csrf(request, csrf)
    policy = webhooks.Policy.from_settings(crm.settings)
    outcome: Outcome = {}
    if action == "url":
        secret, error, status = _change(
            session, lambda s: storeconfig.set_webhook(s, principal, store_id, url, policy)
        )
        if error is None:
            outcome["notice"] = "Webhook saved." if secret else "Webhook removed."
            outcome["secret"] = secret
    elif action == "secret":
        secret, error, status = _change(
            session, lambda s: storeconfig.rotate_secret(s, principal, store_id)
        )
        if secret:
            outcome.update(notice="New webhook secret.", secret=secret)
    elif action == "test":
        event, error, status = _change(
            session, lambda s: storeconfig.send_test(s, principal, store_id, crm.sessions, policy)
        )
        if event:
            outcome["notice"] = f"Test event {event} sent; reload to see its delivery."
    else:
        error, status = "Unknown action.", 404
    return _guarded(request, session, principal, store_id, status=status, error=error, **outcome)
