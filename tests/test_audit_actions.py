"""Every audit action the code can write, and the path that writes it.

`TABLE` names, for each action, the path that should write it (an API route, a
console page, a CLI command or an in-process service) and who the trail should
name as the actor. Two checks hold the table to the code:

* statically, every `audit.record(...)` under `src/facecrm` is parsed and its action
  resolved (string constants directly, the few computed ones through `DYNAMIC`):
  the actions in the code must be exactly the table's keys, so a new action without
  a row, or a computed action nobody resolved, fails here with its file:line;
* behaviourally, one scenario drives every path against a real server (SQLite and
  PostgreSQL), the console with a real log-in and CSRF token, the real CLI and the
  services, and each row is checked on the events *that path* wrote: the action,
  the actor, the customer and the store.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

import facecrm
from facecrm.config import Settings
from facecrm.crm import authz, db
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import (
    AuditEvent,
    ConsentText,
    Customer,
    FaceTemplate,
    OtpOutbox,
    PaySession,
    SelfServiceLink,
)
from facecrm.crm.retention import purge
from facecrm.crm.service import FaceCRM
from facecrm.crypto import add_master_key
from facecrm.server import create_app
from facecrm.vision.liveness import LivenessVerdict, TimedFace
from facecrm.vision.pipeline import FacePipeline

from server import free_port, serve

SRC = Path(facecrm.__file__).resolve().parent
PASSWORD = "correct horse battery"


@dataclass(frozen=True, slots=True)
class Row:
    """Where an action should come from and what its event should say."""

    path: str  # the route, console page, CLI command or service that writes it
    actor: str  # the event's actor label (`Principal.label`: kind:name)
    customer: str | None = None  # the scenario's customer it is about ("rose", "kit")
    store: str | None = None  # the scenario's store it happened in ("A")


SYSTEM = "system:cli"  # `authz.SYSTEM`: the CLI operator and the services
STAFF = "staff:associate"
SELF = "customer:self-service"  # `selfservice.principal`: a customer on their own phone

TABLE: dict[str, Row] = {
    # accounts, stores and devices
    "login": Row("POST /api/v1/auth/token", "staff:admin"),
    "login_failed": Row("console POST /console/login (wrong password)", "staff:nobody"),
    "logout": Row("console POST /console/logout", STAFF),
    "staff_create": Row("cli facecrm admin create", SYSTEM),
    "staff_disable": Row("cli facecrm admin disable", SYSTEM),
    "staff_enable": Row("POST /api/v1/staff/{id}/enable", "staff:admin"),
    "staff_password": Row("POST /api/v1/staff/{id}/password", "staff:admin"),
    "staff_delete": Row("DELETE /api/v1/staff/{id}", "staff:admin"),
    "staff_stores": Row("PUT /api/v1/staff/{id}/stores", "staff:manager"),
    "staff_unlock": Row("POST /api/v1/staff/{id}/unlock", "staff:manager"),
    "store_create": Row("POST /api/v1/stores", "staff:admin", None, "A"),
    "store_config": Row("PUT /api/v1/stores/{id}/config", "staff:manager", None, "A"),
    "device_create": Row("POST /api/v1/devices", "staff:manager", None, "A"),
    "device_revoke": Row("POST /api/v1/devices/{id}/revoke", "staff:manager", None, "A"),
    "device_rotate": Row("POST /api/v1/devices/{id}/rotate", "staff:manager", None, "A"),
    "webhook_test": Row("POST /api/v1/stores/{id}/webhook/test", "staff:manager", None, "A"),
    "camera_snapshot": Row("POST /api/v1/stores/{id}/snapshots", "staff:manager", None, "A"),
    "readiness_confirm": Row("POST /api/v1/stores/{id}/readiness/{item}", "staff:admin", None, "A"),
    # customers, consents and faces
    "customer_create": Row("POST /api/v1/customers", STAFF, "rose"),
    "customer_update": Row("PATCH /api/v1/customers/{id}", STAFF, "rose"),
    "customer_search": Row("console GET /console/customers", STAFF),
    "customer_export": Row("GET /api/v1/customers/{id}/export", "staff:admin", "rose"),
    "customer_import": Row("POST /api/v1/customers/import", "staff:admin"),
    "customer_list_export": Row("GET /api/v1/customers/export.csv", "staff:admin"),
    "customer_list": Row("service FaceCRM.customers", SYSTEM),
    "lookup": Row("GET /api/v1/customers/{id}", STAFF, "rose"),
    "consent_give": Row("POST /api/v1/customers/{id}/consents", STAFF, "rose", "A"),
    "consent_text_create": Row("POST /api/v1/consent-texts", "staff:admin"),
    "enrollment_config": Row("PUT /api/v1/enrollment-options/{scope}", "staff:manager", None, "A"),
    "kiosk_login": Row("console POST /console/kiosk/login", "device:kiosk-1", None, "A"),
    "till_login": Row("console POST /console/till/login", "device:till", None, "A"),
    "consent_withdraw": Row("DELETE /api/v1/customers/{id}/consents/{purpose}", STAFF, "rose", "A"),
    "enroll_faces": Row("POST /api/v1/customers/{id}/faces", STAFF, "rose"),
    "enroll_duplicate": Row(
        "console POST /console/enroll (a face already enrolled)", STAFF, "rose", "A"
    ),
    "enroll_mismatch": Row(
        "POST /api/v1/customers/{id}/faces (another person's photo)", STAFF, "rose"
    ),
    "face_override": Row(
        "POST /api/v1/customers/{id}/faces (manager override)", "staff:manager", "rose"
    ),
    "photo_view": Row("console GET /console/customers/{id}/photo", STAFF, "rose"),
    "erase": Row("DELETE /api/v1/customers/{id}", "staff:manager", "kit"),
    "erasure_log_export": Row("cli facecrm erasures export", SYSTEM),
    "erasure_replay": Row("cli facecrm erasures replay", SYSTEM),
    # recognition
    "identify": Row("POST /api/v1/identify", STAFF, "rose", "A"),
    "identify_summary": Row("POST /api/v1/identify", STAFF, None, "A"),
    "phone_lookup": Row("console POST /console/lookup", STAFF, "kit", "A"),
    "phone_lookup_summary": Row("console POST /console/lookup", STAFF, None, "A"),
    "verify": Row("POST /api/v1/verify", STAFF, "rose"),
    "gallery_sync": Row("GET /api/v1/agent/gallery", "device:door-cam", None, "A"),
    # store activity and alerts
    "visit": Row("POST /api/v1/agent/events", "device:door-cam", "rose", "A"),
    "alert": Row("POST /api/v1/agent/events", "device:door-cam", "rose", "A"),
    "camera_silent": Row("POST /api/v1/agent/heartbeat (silent)", "device:door-cam", None, "A"),
    "camera_back": Row("POST /api/v1/agent/heartbeat (frames)", "device:door-cam", None, "A"),
    "alert_claim": Row("POST /api/v1/alerts/{id}/claim", STAFF, "rose", "A"),
    "alert_ack": Row("console POST /console/alerts/{id}/ack", STAFF, "rose", "A"),
    "alert_dismiss": Row("POST /api/v1/alerts/{id}/dismiss", STAFF, "kit", "A"),
    "match_dispute": Row("console POST /console/alerts/{id}/dispute", STAFF, "rose", "A"),
    "dispute_report": Row("GET /api/v1/stores/{id}/disputes", "staff:manager", None, "A"),
    "pos_lookup": Row("GET /api/v1/pos/customer", "device:till", "lou", "A"),
    # face payment (issue 14)
    "payment_enroll": Row("POST /api/v1/customers/{id}/payment", STAFF, "rose", "A"),
    "payment_update": Row("PATCH /api/v1/customers/{id}/payment", STAFF, "rose", "A"),
    "payment_remove": Row("DELETE /api/v1/customers/{id}/payment", STAFF, "rose", "A"),
    "pay_session_create": Row("POST /api/v1/pay/sessions", "device:till", None, "A"),
    "pay_session_expired": Row(
        "GET /api/v1/pay/sessions/{id} (a minute later)", "device:till", None, "A"
    ),
    "pay_session_frames": Row("POST /api/v1/pay/sessions/{id}/frames", "device:till", "rose", "A"),
    "pay_session_step_up": Row(
        "POST /api/v1/pay/sessions/{id}/step-up", "device:till", "rose", "A"
    ),
    "payment_locked": Row(
        "POST /api/v1/pay/sessions/{id}/step-up (third wrong digits)", "device:till", "rose", "A"
    ),
    "pay_session_cancel": Row("POST /api/v1/pay/sessions/{id}/cancel", "device:till", None, "A"),
    "pay_session_confirm": Row(
        "POST /api/v1/pay/sessions/{id}/confirm", "device:till", "rose", "A"
    ),
    "face_payments_read": Row("GET /api/v1/customers/{id}/face-payments", STAFF, "rose"),
    "shift_start": Row("POST /api/v1/shifts/{store_id}", STAFF, None, "A"),
    "shift_end": Row("DELETE /api/v1/shifts/{store_id}", STAFF, None, "A"),
    "purchase": Row("POST /api/v1/customers/{id}/purchases", STAFF, "rose", "A"),
    "interest": Row("POST /api/v1/customers/{id}/interests", STAFF, "rose", "A"),
    "interest_update": Row("PATCH /api/v1/interests/{id}", STAFF, "rose", "A"),
    "feedback": Row("POST /api/v1/customers/{id}/feedback", STAFF, "rose", "A"),
    "feedback_update": Row("PATCH /api/v1/feedback/{id}", STAFF, "rose", "A"),
    # the trail itself and the background services
    "audit_read": Row("GET /api/v1/audit", "staff:auditor"),
    "keys_rotate": Row("service FaceCRM.rotate_keys", SYSTEM),
    "purge": Row("service retention.purge", SYSTEM),
    "forget_face": Row("service retention.purge", SYSTEM, "rose"),
    "templates_backfill": Row("cli facecrm templates backfill", SYSTEM, "rose"),
    "templates_backfill_summary": Row("cli facecrm templates backfill", SYSTEM),
    "audit_checkpoint": Row("service retention.purge", SYSTEM),
    "schema_migrated": Row("cli facecrm migrate (from the previous revision)", SYSTEM),
    # self-enrollment on the customer's own phone (the actor: the customer themself)
    "self_service_link": Row("cli facecrm stores qr", SYSTEM, None, "A"),
    "self_code_send": Row("self POST /self/{token}/code", SELF, None, "A"),
    "self_code_failed": Row("self POST /self/{token}/enroll (a wrong code)", SELF, None, "A"),
    "incentive_grant": Row("self POST /self/{token}/enroll", SELF, "joe", "A"),
    "self_view": Row("self GET /self/me", SELF, "joe", "A"),
    "self_sign_in": Row("self POST /self/{token}/signin", SELF, "joe", "A"),
    "otp_outbox_read": Row("cli facecrm otp outbox", SYSTEM),
}


# -- the static check: the actions in the code are the table's keys ---------------------

PURPOSES = frozenset({"identify", "phone_lookup"})  # FaceCRM.identify(purpose=...)
REFUSALS = frozenset({"enroll_duplicate", "enroll_mismatch"})  # _Refused(action, ...)

# (module, enclosing function, the action expression as `ast.unparse` writes it) -> actions
DYNAMIC: dict[tuple[str, str, str], frozenset[str]] = {
    ("crm/accounts.py", "set_active", "'staff_enable' if active else 'staff_disable'"): (
        frozenset({"staff_enable", "staff_disable"})
    ),
    ("crm/service.py", "FaceCRM.identify", "purpose"): PURPOSES,
    ("crm/service.py", "FaceCRM.identify", "f'{purpose}_summary'"): frozenset(
        f"{p}_summary" for p in PURPOSES
    ),
    ("crm/service.py", "FaceCRM._refusals", "refused.action"): REFUSALS,
    ("crm/kiosk.py", "open_session", "LOGIN_ACTIONS[kind]"): frozenset(
        {"kiosk_login", "till_login"}
    ),
}


@dataclass(frozen=True, slots=True)
class Site:
    """One call that writes an audit event."""

    module: str  # path relative to the package root
    line: int
    function: str  # the enclosing function's qualified name ("" at module level)
    action: ast.expr | None  # None: the call passes no action we can see

    @property
    def where(self) -> str:
        return f"{self.module}:{self.line}"


def _package(module: str) -> str:
    parts = ["facecrm", *Path(module).with_suffix("").parts]
    return ".".join(parts[:-1])


def _aliases(tree: ast.Module, module: str) -> tuple[set[str], set[str]]:
    """Names the module binds to `facecrm.crm.audit` and to its `record` function."""
    modules, functions = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "facecrm.crm.audit":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package(module).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                if base == "facecrm.crm" and alias.name == "audit":
                    modules.add(alias.asname or "audit")
                elif base == "facecrm.crm.audit" and alias.name == "record":
                    functions.add(alias.asname or "record")
    return modules, functions


class _Calls(ast.NodeVisitor):
    """Calls matching `wanted`, each with its enclosing function's qualified name."""

    def __init__(self, wanted: Any) -> None:
        self.wanted = wanted
        self.scope: list[str] = []
        self.found: list[tuple[ast.Call, str]] = []

    def _scoped(self, node: ast.AST) -> None:
        self.scope.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        if self.wanted(node):
            self.found.append((node, ".".join(self.scope)))
        self.generic_visit(node)


def _modules(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root).as_posix()
        yield module, ast.parse(path.read_text(encoding="utf-8"), filename=module)


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    plain = [a for a in call.args[: index + 1] if not isinstance(a, ast.Starred)]
    return call.args[index] if len(plain) > index else None


def record_sites(root: Path = SRC) -> list[Site]:
    """Every `audit.record(session, principal, ACTION, ...)` call under `root`."""
    sites = []
    for module, tree in _modules(root):
        modules, functions = _aliases(tree, module)

        def is_record(
            call: ast.Call, modules: set[str] = modules, fns: set[str] = functions
        ) -> bool:
            f = call.func
            if isinstance(f, ast.Attribute):
                return f.attr == "record" and ast.unparse(f.value) in modules
            return isinstance(f, ast.Name) and f.id in fns

        finder = _Calls(is_record)
        finder.visit(tree)
        for call, function in finder.found:
            sites.append(Site(module, call.lineno, function, _argument(call, 2, "action")))
    return sites


def code_actions(root: Path = SRC) -> tuple[set[str], list[str], set[tuple[str, str, str]]]:
    """The actions the code can write, the calls whose action is unknown, the DYNAMIC used."""
    actions: set[str] = set()
    problems: list[str] = []
    used: set[tuple[str, str, str]] = set()
    for site in record_sites(root):
        expr = site.action
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            actions.add(expr.value)
            continue
        key = (site.module, site.function, ast.unparse(expr) if expr is not None else "")
        if key in DYNAMIC:
            actions |= DYNAMIC[key]
            used.add(key)
        else:
            problems.append(
                f"{site.where}: audit action {key[2]!r} in {site.function or 'module'} is "
                "computed; resolve it in DYNAMIC (and add rows to TABLE)"
            )
    return actions, problems, used


def test_every_action_in_the_code_has_a_row() -> None:
    actions, problems, used = code_actions()
    assert not problems, "\n".join(problems)
    assert not actions - TABLE.keys(), (
        f"audit actions with no row in TABLE: {sorted(actions - TABLE.keys())}"
    )
    assert not TABLE.keys() - actions, (
        f"rows for actions no code writes: {sorted(TABLE.keys() - actions)}"
    )
    assert used == DYNAMIC.keys(), f"stale DYNAMIC entries: {sorted(DYNAMIC.keys() - used)}"


TRANSLATORS = ("api/", "web/", "cli.py")  # they only translate (the project's rule)


def test_audit_events_are_written_by_the_services() -> None:
    """Routes, console pages and CLI commands never write the trail themselves: an action
    audited there is missed by the next path to the same service (stores, staff and
    devices were audited by both the admin routes and the CLI; the trail's reads by both
    the API and the console)."""
    translating = [s.where for s in record_sites() if s.module.startswith(TRANSLATORS)]
    assert not translating, f"audit.record outside the services: {translating}"


def test_the_static_check_sees_new_and_computed_actions(tmp_path: Path) -> None:
    """The check above can fail: a new action and an unresolved computed one are found."""
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "new.py").write_text(
        "from facecrm.crm import audit as trail\n"
        "from facecrm.crm.audit import record as write\n"
        "from . import audit\n"
        "\n"
        "class Thing:\n"
        "    def act(self, session, principal, name):\n"
        "        trail.record(session, principal, 'brand_new', None)\n"
        "        write(session, principal, action='another_one')\n"
        "        audit.record(session, principal, name + '_done')\n"
        "        self.record(session, principal, 'not_an_audit_call')\n"
    )
    actions, problems, _ = code_actions(tmp_path)
    assert actions == {"brand_new", "another_one"}
    assert len(problems) == 1 and problems[0].startswith("crm/new.py:9: ")
    assert "Thing.act" in problems[0]


def test_identify_purposes_are_the_ones_resolved() -> None:
    """`FaceCRM.identify` writes `purpose` and `{purpose}_summary`: every purpose any
    caller passes (and the default) must be in PURPOSES, so DYNAMIC stays true."""
    found: set[object] = set()
    for module, tree in _modules(SRC):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "identify":
                names = [a.arg for a in node.args.args]
                if "purpose" in names:
                    defaults = dict(zip(names[::-1], node.args.defaults[::-1], strict=False))
                    found.add(ast.literal_eval(defaults["purpose"]))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr != "identify":
                    continue
                purpose = _argument(node, 3, "purpose")
                if purpose is not None:
                    assert isinstance(purpose, ast.Constant), f"{module}:{node.lineno}"
                    found.add(purpose.value)
    assert found == PURPOSES


def test_refusal_actions_are_the_ones_resolved() -> None:
    """`_refusals` writes `refused.action`: every `_Refused(...)` names one of REFUSALS."""
    found: set[object] = set()
    for module, tree in _modules(SRC):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "_Refused":
                action = _argument(node, 0, "action")
                assert isinstance(action, ast.Constant), f"{module}:{node.lineno}"
                found.add(action.value)
    assert found == REFUSALS


def test_audit_events_are_only_made_by_audit_record() -> None:
    """No other code builds an `AuditEvent`: `audit.record` is the one way in, so the
    static check above sees every action."""
    makers = []
    for module, tree in _modules(SRC):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("AuditEvent"):
                makers.append(f"{module}:{node.lineno}")
    assert len(makers) == 1 and makers[0].startswith("crm/audit.py:"), makers


# -- the behavioural check: each path writes its actions -------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    action: str
    actor: str
    customer_id: str | None
    store_id: str | None


@dataclass
class Run:
    """What the scenario did: the events each path wrote, and the ids it made."""

    crm: FaceCRM
    ids: dict[str, str] = field(default_factory=dict, repr=False)
    written: dict[str, list[Seen]] = field(default_factory=dict, repr=False)
    failed: dict[str, str] = field(default_factory=dict)

    def _last_id(self) -> int:
        with self.crm.sessions() as session:
            return int(session.scalar(select(func.max(AuditEvent.id))) or 0)

    @contextmanager
    def path(self, label: str) -> Iterator[None]:
        """Attribute the audit events written inside the block to `label`.

        A failing path is recorded, not raised: the rows it owns fail with its error,
        and the rest of the scenario still runs.
        """
        assert label not in self.written, f"path {label!r} driven twice"
        before = self._last_id()
        try:
            yield
        except Exception as exc:
            self.failed[label] = f"{type(exc).__name__}: {exc}"
        finally:
            with self.crm.sessions() as session:
                events = session.scalars(
                    select(AuditEvent).where(AuditEvent.id > before).order_by(AuditEvent.id)
                )
                self.written[label] = [
                    Seen(e.action, e.actor, e.customer_id, e.store_id) for e in events
                ]


def ok(response: httpx.Response, status: int) -> Any:
    what = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
    is_json = response.headers.get("content-type", "").endswith("json")
    return response.json() if is_json and response.content else None


def cli(settings: Settings, *args: str) -> None:
    """The real `facecrm` command line on the scenario's data dir and database."""
    env = {**os.environ, "FACECRM_DATA_DIR": str(settings.data_dir), "COLUMNS": "200"}
    env.pop("FACECRM_DATABASE_URL", None)
    if settings.database_url:
        env["FACECRM_DATABASE_URL"] = settings.database_url
    done = subprocess.run(
        [sys.executable, "-m", "facecrm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"facecrm {' '.join(args)}: {done.stderr[-500:]}"


def _previous_revision() -> str:
    """The revision before head (Alembic's own graph)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db._alembic_config()).get_revision(db.head_revision())
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


ROSE_PAYMENT = {  # Rose's face payment set-up, at the counter
    "token": "wlt_rose_0001",
    "provider": "examplepay",
    "phone_last4": "0412",
    "currency": "EUR",
    "limit_per_transaction": 5000,
    "limit_per_day": 20000,
    "customer_present": True,
}


def drive(run: Run, url: str, faces: Path, settings: Settings) -> None:
    """One scenario through every path of TABLE (and the setup they need)."""
    ids = run.ids
    tokens: dict[str, str] = {}

    def photo(relative: str) -> dict[str, tuple[str, bytes, str]]:
        path = faces / relative
        return {"image": (path.name, path.read_bytes(), "image/jpeg")}

    def token(username: str) -> str:
        r = httpx.post(
            f"{url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}
        )
        return str(ok(r, 200)["access_token"])

    with ExitStack() as stack:

        def client(**headers: str) -> httpx.Client:
            return stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=60))

        def staff(name: str) -> httpx.Client:
            return client(Authorization=f"Bearer {tokens.get(name, '-')}")

        console = client()

        def csrf() -> str:
            return str(console.cookies.get("facecrm_csrf", ""))

        with run.path("cli facecrm migrate (from the previous revision)"):
            db.downgrade(run.crm.engine, _previous_revision())
            cli(settings, "migrate")
        with run.path("cli facecrm admin create"):
            cli(settings, "admin", "create", "--username", "admin", "--password", PASSWORD)
        with run.path("console POST /console/login (wrong password)"):
            console.get("/console/login")
            login = {"username": "nobody", "password": "not the password", "csrf": csrf()}
            ok(console.post("/console/login", data=login), 401)
        with run.path("POST /api/v1/auth/token"):
            tokens["admin"] = token("admin")
        admin = staff("admin")
        with run.path("POST /api/v1/stores"):
            ids["A"] = ok(admin.post("/api/v1/stores", json={"code": "A", "name": "A"}), 201)["id"]
        with run.path("setup: staff accounts and their log-ins"):
            for name, role in (
                ("manager", "manager"),
                ("associate", "associate"),
                ("auditor", "auditor"),
                ("temp", "associate"),
            ):
                stores = [] if role == "auditor" else [ids["A"]]
                body = {"username": name, "password": PASSWORD, "role": role, "store_ids": stores}
                ids[name] = ok(admin.post("/api/v1/staff", json=body), 201)["id"]
            for name in ("manager", "associate", "auditor"):
                tokens[name] = token(name)
            login = {"username": "associate", "password": PASSWORD, "csrf": csrf()}
            ok(console.post("/console/login", data=login), 303)
        manager, associate, auditor = staff("manager"), staff("associate"), staff("auditor")

        with run.path("POST /api/v1/devices"):
            for name, kind in (("door-cam", "agent"), ("spare", "agent"), ("till", "pos")):
                body = {"store_id": ids["A"], "kind": kind, "name": name}
                made = ok(manager.post("/api/v1/devices", json=body), 201)
                ids[name], ids[f"{name} key"] = made["id"], made["api_key"]
        with run.path("PUT /api/v1/enrollment-options/{scope}"):
            body = {"ask_phone": True}
            ok(manager.put(f"/api/v1/enrollment-options/{ids['A']}", json=body), 200)
        with run.path("console POST /console/kiosk/login"):
            body = {"store_id": ids["A"], "kind": "kiosk", "name": "kiosk-1"}
            key = ok(manager.post("/api/v1/devices", json=body), 201)["api_key"]
            kiosk = client()
            kiosk.get("/console/kiosk/login")
            form = {"key": key, "csrf": str(kiosk.cookies.get("facecrm_csrf", ""))}
            ok(kiosk.post("/console/kiosk/login", data=form), 303)
        with run.path("console POST /console/till/login"):
            till = client()
            till.get("/console/till/login")
            form = {"key": ids["till key"], "csrf": str(till.cookies.get("facecrm_csrf", ""))}
            ok(till.post("/console/till/login", data=form), 303)
        with run.path("cli facecrm admin disable"):
            cli(settings, "admin", "disable", "temp")
        with run.path("POST /api/v1/staff/{id}/enable"):
            ok(admin.post(f"/api/v1/staff/{ids['temp']}/enable"), 204)
        with run.path("POST /api/v1/staff/{id}/password"):
            body = {"password": "another long password"}
            ok(admin.post(f"/api/v1/staff/{ids['temp']}/password", json=body), 204)
        with run.path("PUT /api/v1/staff/{id}/stores"):
            body = {"store_ids": [ids["A"]]}
            ok(manager.put(f"/api/v1/staff/{ids['temp']}/stores", json=body), 200)
        with run.path("POST /api/v1/staff/{id}/unlock"):
            ok(manager.post(f"/api/v1/staff/{ids['temp']}/unlock"), 200)
        with run.path("DELETE /api/v1/staff/{id}"):
            ok(admin.delete(f"/api/v1/staff/{ids['temp']}"), 204)
        with run.path("POST /api/v1/devices/{id}/rotate"):
            ok(manager.post(f"/api/v1/devices/{ids['spare']}/rotate"), 200)
        with run.path("POST /api/v1/devices/{id}/revoke"):
            ok(manager.post(f"/api/v1/devices/{ids['spare']}/revoke"), 204)
        with run.path("POST /api/v1/stores/{id}/readiness/{item}"):
            ok(admin.post(f"/api/v1/stores/{ids['A']}/readiness/signage"), 200)

        # Rose: created, consented and enrolled step by step over the API
        with run.path("POST /api/v1/customers"):
            body = {"name": "Rose Leslie", "tier": "vip", "show_photo": True}
            ids["rose"] = ok(associate.post("/api/v1/customers", json=body), 201)["id"]
        rose = f"/api/v1/customers/{ids.get('rose')}"
        with run.path("PATCH /api/v1/customers/{id}"):
            ok(associate.patch(rose, json={"preferred_name": "Rose"}), 200)
        with run.path("POST /api/v1/consent-texts"):
            body = {"purpose": "marketing", "language": "en", "body": "Offers by e-mail."}
            ok(admin.post("/api/v1/consent-texts", json=body), 201)
        with run.path("POST /api/v1/customers/{id}/consents"):
            for purpose, store in (("in_store_recognition", ids["A"]), ("marketing", None)):
                body = {"purpose": purpose, "channel": "kiosk"}
                ok(associate.post(f"{rose}/consents", json={**body, "store_id": store}), 201)
        with run.path("POST /api/v1/customers/{id}/faces"):
            form = {"keep_photo": "true"}
            files = photo("identities/rose_leslie/1.jpg")
            ok(associate.post(f"{rose}/faces", files=files, data=form), 201)

        # Kit: enrolled in one step at the console
        headers = {"X-CSRF-Token": csrf()}
        with run.path("setup: console POST /console/enroll"):
            form = {"name": "Kit Harington", "consent": "true", "consent_version": CURRENT}
            files = photo("identities/kit_harington/1.jpg")
            r = console.post("/console/enroll", data=form, files=files, headers=headers)
            ids["kit"] = ok(r, 201)["customer_id"]
        with run.path("console POST /console/enroll (a face already enrolled)"):
            form = {"name": "Rose Again", "consent": "true", "consent_version": CURRENT}
            files = photo("identities/rose_leslie/2.jpg")
            r = console.post("/console/enroll", data=form, files=files, headers=headers)
            assert ok(r, 409)["reason"] == "already_enrolled"
        with run.path("POST /api/v1/customers/{id}/faces (another person's photo)"):
            r = associate.post(f"{rose}/faces", files=photo("identities/barack_obama/1.jpg"))
            assert ok(r, 422)["reason"] == "face_mismatch"
        with run.path("POST /api/v1/customers/{id}/faces (manager override)"):
            form = {"override": "true", "reason": "stage make-up"}
            files = photo("identities/barack_obama/1.jpg")
            ok(manager.post(f"{rose}/faces", files=files, data=form), 201)

        # recognition
        with run.path("POST /api/v1/identify"):
            files, form = photo("identities/rose_leslie/2.jpg"), {"store_id": ids["A"]}
            found = ok(associate.post("/api/v1/identify", files=files, data=form), 200)
            assert [f["customer"]["id"] for f in found["faces"]] == [ids["rose"]]
        with run.path("POST /api/v1/verify"):
            files, form = photo("identities/rose_leslie/2.jpg"), {"customer_id": ids["rose"]}
            assert ok(associate.post("/api/v1/verify", files=files, data=form), 200)["match"]
        with run.path("console POST /console/lookup"):
            files = photo("identities/kit_harington/2.jpg")
            r = console.post("/console/lookup", files=files, headers=headers)
            assert ok(r, 200)["card"]["id"] == ids["kit"]
        with run.path("GET /api/v1/customers/{id}"):
            ok(associate.get(rose), 200)
        with run.path("console GET /console/customers"):
            ok(console.get("/console/customers", params={"q": "Rose"}), 200)
        with run.path("console GET /console/customers/{id}/photo"):
            ok(console.get(f"/console/customers/{ids['rose']}/photo"), 200)
        with run.path("GET /api/v1/customers/{id}/export"):
            ok(admin.get(f"{rose}/export"), 200)
        with run.path("POST /api/v1/customers/import"):
            body, csv = b"name,loyalty_id\r\nLoyal Lou,L-77\r\n", {"Content-Type": "text/csv"}
            r = admin.post("/api/v1/customers/import", content=body, headers=csv)
            assert ok(r, 200)["created"] == 1
        with run.path("GET /api/v1/customers/export.csv"):
            assert "Loyal Lou" in admin.get("/api/v1/customers/export.csv").text

        # store activity, the agent and alerts
        store = {"store_id": ids["A"]}
        with run.path("POST /api/v1/customers/{id}/purchases"):
            item = {"sku": "B-38", "name": "Red boots", "quantity": 1, "unit_price_cents": 12900}
            ok(associate.post(f"{rose}/purchases", json={**store, "items": [item]}), 201)
        with run.path("POST /api/v1/customers/{id}/interests"):
            body = {**store, "product": "Red boots 39", "out_of_stock": True}
            ids["interest"] = ok(associate.post(f"{rose}/interests", json=body), 201)["id"]
        with run.path("PATCH /api/v1/interests/{id}"):
            body = {"out_of_stock": False}
            ok(associate.patch(f"/api/v1/interests/{ids['interest']}", json=body), 200)
        with run.path("POST /api/v1/customers/{id}/feedback"):
            body = {**store, "text": "the fitting rooms were full", "rating": 3}
            ids["feedback"] = ok(associate.post(f"{rose}/feedback", json=body), 201)["id"]
        with run.path("PATCH /api/v1/feedback/{id}"):
            body = {"resolved": True}
            ok(associate.patch(f"/api/v1/feedback/{ids['feedback']}", json=body), 200)
        with run.path("PUT /api/v1/stores/{id}/config"):
            body = {"rules": {"long_absence": {"days": 30}, "any_arrival": {"enabled": True}}}
            ok(manager.put(f"/api/v1/stores/{ids['A']}/config", json=body), 200)
        with run.path("setup: PUT /api/v1/stores/{id}/webhook"):
            # a local port nobody listens on: the test event's delivery fails, and is logged
            settings.webhook_allow_hosts, settings.webhook_allow_http = ["127.0.0.1"], True
            body = {"url": f"http://127.0.0.1:{free_port()}/hook"}
            ok(manager.put(f"/api/v1/stores/{ids['A']}/webhook", json=body), 200)
        with run.path("POST /api/v1/stores/{id}/webhook/test"):
            ok(manager.post(f"/api/v1/stores/{ids['A']}/webhook/test"), 202)
        with run.path("POST /api/v1/shifts/{store_id}"):
            ok(associate.post(f"/api/v1/shifts/{ids['A']}"), 201)
        agent = client(**{"X-API-Key": ids.get("door-cam key", "-")})
        with run.path("GET /api/v1/agent/gallery"):
            assert ok(agent.get("/api/v1/agent/gallery"), 200)["templates"]
        with run.path("POST /api/v1/agent/events"):
            at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            events = [
                {"key": f"visit-000{n}", "type": "visit", "customer_id": ids[who], "at": at}
                for n, who in enumerate(("rose", "kit"), 1)
            ]
            body = {"events": [{**e, "camera": "door", "similarity": 0.9} for e in events]}
            outcomes = ok(agent.post("/api/v1/agent/events", json=body), 200)["outcomes"]
            assert outcomes == ["visit", "visit"]
        for path, ago in (("silent", 10), ("frames", 0)):  # the store's window: 5 minutes
            with run.path(f"POST /api/v1/agent/heartbeat ({path})"):
                at = (datetime.now(UTC) - timedelta(minutes=ago)).isoformat()
                body = {"cameras": [{"camera": "door", "last_frame_at": at}]}
                (camera,) = ok(agent.post("/api/v1/agent/heartbeat", json=body), 200)
                assert camera["silent"] is (path == "silent")
        with run.path("POST /api/v1/stores/{id}/snapshots"):
            body = {"camera": "door"}
            ok(manager.post(f"/api/v1/stores/{ids['A']}/snapshots", json=body), 202)
        with run.path("POST /api/v1/alerts/{id}/claim"):
            raised = {
                a["customer_id"]: str(a["id"]) for a in ok(associate.get("/api/v1/alerts"), 200)
            }
            ids["alert"], ids["kit alert"] = raised[ids["rose"]], raised[ids["kit"]]
            ok(associate.post(f"/api/v1/alerts/{ids['alert']}/claim"), 200)
        with run.path("console POST /console/alerts/{id}/ack"):
            ok(console.post(f"/console/alerts/{ids['alert']}/ack", headers=headers), 200)
        with run.path("POST /api/v1/alerts/{id}/dismiss"):
            ok(associate.post(f"/api/v1/alerts/{ids['kit alert']}/dismiss"), 200)
        with run.path("console POST /console/alerts/{id}/dispute"):
            ok(console.post(f"/console/alerts/{ids['alert']}/dispute", headers=headers), 200)
        with run.path("GET /api/v1/stores/{id}/disputes"):
            assert len(ok(manager.get(f"/api/v1/stores/{ids['A']}/disputes"), 200)) == 1
        till = client(**{"X-API-Key": ids.get("till key", "-")})
        with run.path("GET /api/v1/pos/customer"):
            found = ok(till.get("/api/v1/pos/customer", params={"loyalty_id": "L-77"}), 200)
            ids["lou"] = found["id"]
        with run.path("setup: POST /api/v1/customers/{id}/consents (face_payment)"):
            body = {"purpose": "face_payment", "channel": "kiosk", "store_id": ids["A"]}
            ok(associate.post(f"{rose}/consents", json=body), 201)
        with run.path("POST /api/v1/customers/{id}/payment"):
            ok(associate.post(f"{rose}/payment", json=ROSE_PAYMENT), 201)
        with run.path("PATCH /api/v1/customers/{id}/payment"):
            body = {"limit_per_day": 10000, "customer_present": True}
            ok(associate.patch(f"{rose}/payment", json=body), 200)
        with run.path("DELETE /api/v1/customers/{id}/payment"):
            ok(associate.delete(f"{rose}/payment"), 204)
        with run.path("POST /api/v1/pay/sessions"):
            body = {"amount": 1250, "currency": "EUR", "till": "till-1"}
            ids["pay session"] = ok(till.post("/api/v1/pay/sessions", json=body), 201)["id"]
        with run.path("GET /api/v1/pay/sessions/{id} (a minute later)"):
            with run.crm.sessions.begin() as session:
                gone = datetime.now(UTC) - timedelta(seconds=1)
                made = PaySession.id == ids["pay session"]
                session.execute(update(PaySession).where(made).values(expires_at=gone))
            r = till.get(f"/api/v1/pay/sessions/{ids['pay session']}")
            assert ok(r, 200)["decline_reason"] == "expired"
        drive_face_checkout(run, till, associate, rose, faces)
        with run.path("DELETE /api/v1/shifts/{store_id}"):
            ok(associate.delete(f"/api/v1/shifts/{ids['A']}"), 204)

        # Rose as enrolled before the cascade (dlib templates only), backfilled from her
        # kept photo
        with run.path("cli facecrm templates backfill"):
            with run.crm.sessions.begin() as session:
                session.execute(
                    delete(FaceTemplate).where(
                        FaceTemplate.customer_id == ids["rose"],
                        FaceTemplate.model_id != run.crm.model_id,
                    )
                )
            cli(settings, "templates", "backfill")

        # a customer enrolls on their own phone through store A's QR link, then signs in
        with run.path("cli facecrm stores qr"):
            cli(settings, "stores", "qr", "A")
        with run.crm.sessions() as session:
            link = session.get(SelfServiceLink, ids.get("A", "-"))
            qr = f"/self/{link.token if link else '-'}"
        phone = client()

        def self_code(contact: str, purpose: str) -> tuple[str, str, str]:
            page = phone.get(qr)
            ok(page, 200)
            nonce = re.search(r'data-nonce="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            body = {"contact": contact, "nonce": nonce, "purpose": purpose}
            challenge = ok(phone.post(f"{qr}/code", data=body), 200)["challenge"]
            with run.crm.sessions() as session:
                sent = session.scalar(
                    select(OtpOutbox.body).where(OtpOutbox.challenge_id == challenge)
                )
            return nonce, challenge, re.search(r"\d{6}", str(sent)).group(0)  # type: ignore[union-attr]

        with run.path("self POST /self/{token}/code"):
            nonce, challenge, code = self_code("joe@example.org", "enroll")
        with run.path("cli facecrm otp outbox"):
            cli(settings, "otp", "outbox", "--to", "joe@example.org")
        with run.crm.sessions() as session:
            english = (ConsentText.language == "en") & ConsentText.active.is_(True)
            english &= ConsentText.purpose == "in_store_recognition"
            text = session.scalar(select(ConsentText.id).where(english))
        form = {
            "name": "Joe",
            "contact": "joe@example.org",
            "challenge": challenge,
            "text_id": str(text),
            "consent": "true",
            "nonce": nonce,
        }
        with run.path("self POST /self/{token}/enroll (a wrong code)"):
            wrong = {**form, "code": f"{(int(code) + 1) % 1_000_000:06d}"}
            ok(
                phone.post(f"{qr}/enroll", data=wrong, files=photo("identities/joe_biden/1.jpg")),
                422,
            )
        with run.path("self POST /self/{token}/enroll"):
            done = phone.post(
                f"{qr}/enroll",
                data={**form, "code": code},
                files=photo("identities/joe_biden/1.jpg"),
            )
            ok(done, 201)
            with run.crm.sessions() as session:
                ids["joe"] = str(session.scalar(select(Customer.id).where(Customer.name == "Joe")))
        with run.path("self GET /self/me"):
            ok(phone.get("/self/me"), 200)
        with run.path("self POST /self/{token}/signin"):
            phone.cookies.clear()
            nonce, challenge, code = self_code("joe@example.org", "signin")
            body = {
                "contact": "joe@example.org",
                "challenge": challenge,
                "code": code,
                "nonce": nonce,
            }
            ok(phone.post(f"{qr}/signin", data=body), 200)

        # the trail, withdrawal and erasure, log-out
        with run.path("GET /api/v1/audit"):
            ok(auditor.get("/api/v1/audit"), 200)
        with run.path("DELETE /api/v1/customers/{id}/consents/{purpose}"):
            ok(associate.delete(f"{rose}/consents/marketing"), 204)
        with run.path("DELETE /api/v1/customers/{id}"):
            ok(manager.delete(f"/api/v1/customers/{ids['kit']}"), 204)
        with run.path("cli facecrm erasures export"):
            cli(settings, "erasures", "export")
        with run.path("cli facecrm erasures replay"):
            cli(settings, "erasures", "replay")
        with run.path("console POST /console/logout"):
            ok(console.post("/console/logout", data={"csrf": csrf()}), 303)

    # the services, in process: the customer list, a new master key, and retention a
    # century from now
    with run.path("service FaceCRM.customers"):
        assert run.crm.customers(authz.SYSTEM)
    with run.path("service FaceCRM.rotate_keys"):
        add_master_key(run.crm.settings)
        assert run.crm.rotate_keys(authz.SYSTEM) >= 1
    with run.path("service retention.purge"):
        report = purge(run.crm, authz.SYSTEM, now=datetime.now(UTC) + timedelta(days=36500))
        assert report.visits >= 1 and report.expired_consents >= 1


class AlwaysLive:
    """TEST DOUBLE of `vision.liveness.LivenessStage`: every burst is live (the real stage
    is tested in its own module; here only the audit events of the paths matter)."""

    def assess(self, frames: Sequence[TimedFace], prompt_at_ms: int) -> LivenessVerdict:
        return LivenessVerdict(None)


def drive_face_checkout(
    run: Run, till: httpx.Client, associate: httpx.Client, rose: str, faces: Path
) -> None:
    """Rose pays by face at till 1: frames, step-up, confirm; then three wrong digits
    lock her; a third session is cancelled ("pay another way")."""
    ids = run.ids
    with run.path("setup: POST /api/v1/customers/{id}/payment (again)"):
        body = {**ROSE_PAYMENT, "token": "wlt_rose_0002"}
        ok(associate.post(f"{rose}/payment", json=body), 201)
    neutral = (faces / "identities/rose_leslie/2.jpg").read_bytes()

    def burst(session_id: str, n: int) -> Any:
        files = [("frames", (f"{i}.jpg", neutral, "image/jpeg")) for i in range(n)]
        # the last frame after any prompt (800-2000 ms), as the protocol's burst runs to
        # smile_after_ms + 2500: the customer's own frames must follow "smile now"
        data = {"at_ms": [str(i * 1100) for i in range(n)]}
        r = till.post(f"/api/v1/pay/sessions/{session_id}/frames", files=files, data=data)
        return ok(r, 200)

    def to_step_up() -> str:
        body = {"amount": 1250, "currency": "EUR", "till": "till-1"}
        session_id = str(ok(till.post("/api/v1/pay/sessions", json=body), 201)["id"])
        assert burst(session_id, 1)["state"] == "challenge"
        assert burst(session_id, 3)["state"] == "step_up"
        return session_id

    with run.path("POST /api/v1/pay/sessions/{id}/frames"):
        ids["paying"] = to_step_up()
    with run.path("POST /api/v1/pay/sessions/{id}/step-up"):
        r = till.post(f"/api/v1/pay/sessions/{ids['paying']}/step-up", json={"digits": "0412"})
        assert ok(r, 200)["state"] == "authorised"
    with run.path("POST /api/v1/pay/sessions/{id}/confirm"):
        item = {"sku": "C1", "name": "Coffee", "quantity": 1, "unit_price": 1250}
        body = {"provider_reference": "ch_1", "items": [item]}
        ok(till.post(f"/api/v1/pay/sessions/{ids['paying']}/confirm", json=body), 200)
    with run.path("GET /api/v1/customers/{id}/face-payments"):
        assert len(ok(associate.get(f"{rose}/face-payments"), 200)) >= 1
    with run.path("setup: a payment session in step_up"):
        locking = to_step_up()
    for digits in ("1111", "2222"):
        with run.path(f"setup: wrong digits {digits}"):
            r = till.post(f"/api/v1/pay/sessions/{locking}/step-up", json={"digits": digits})
            assert ok(r, 200)["state"] == "step_up"
    with run.path("POST /api/v1/pay/sessions/{id}/step-up (third wrong digits)"):
        r = till.post(f"/api/v1/pay/sessions/{locking}/step-up", json={"digits": "3333"})
        assert ok(r, 200)["decline_reason"] == "step_up_failed"
    with run.path("POST /api/v1/pay/sessions/{id}/cancel"):
        body = {"amount": 990, "currency": "EUR", "till": "till-2"}
        session_id = ok(till.post("/api/v1/pay/sessions", json=body), 201)["id"]
        r = till.post(f"/api/v1/pay/sessions/{session_id}/cancel")
        assert ok(r, 200)["decline_reason"] == "cancelled"


@pytest.fixture(scope="module")
def run(module_settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[Run]:
    module_settings.self_min_fill_seconds = 0.0  # the scenario is no bot, only fast
    module_settings.self_incentive_text = "A welcome coffee"
    module_settings.pay_step_up_amount = 1000  # the scenario's 1250 asks for the digits
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with serve(create_app(crm, liveness=AlwaysLive)) as url:
        done = Run(crm)
        drive(done, url, faces_dir, module_settings)
        yield done
    crm.engine.dispose()


@pytest.mark.parametrize("action", sorted(TABLE))
def test_the_path_writes_its_action(run: Run, action: str) -> None:
    row = TABLE[action]
    assert row.path in run.written, f"the scenario never drives {row.path!r}"
    assert row.path not in run.failed, f"{row.path}: {run.failed[row.path]}"
    written = [e for e in run.written[row.path] if e.action == action]
    others = sorted({e.action for e in run.written[row.path]})
    assert written, f"{row.path} wrote no {action!r} event (it wrote {others})"
    expected = Seen(
        action,
        row.actor,
        run.ids.get(row.customer) if row.customer else None,
        run.ids.get(row.store) if row.store else None,
    )
    assert expected in written, f"{row.path}: expected {expected}, wrote {written}"


def test_every_path_ran_and_the_chain_verifies(run: Run) -> None:
    assert not run.failed, run.failed
    report = run.crm.verify_audit()
    assert report.ok, report.problems
