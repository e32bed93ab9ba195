"""The API's seam with the crm layer: one session per request, committed before the
response is sent; permissions checked by the crm operations themselves; typed responses.
(SQLite and PostgreSQL, real server.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import facecrm
from facecrm.alerts.rules import RuleSettings
from facecrm.alerts.service import AlertService
from facecrm.crm import accounts, activity, auditlog, cards, customers, db, imports
from facecrm.crm.activity import Filters, Item
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.errors import Forbidden
from facecrm.crm.models import AuditEvent, Customer, Purpose
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app

from server import serve

PASSWORD = "correct horse battery"
SRC = Path(facecrm.__file__).parent

REFUSE_SQLITE = """
CREATE TRIGGER refuse_customer_create BEFORE INSERT ON audit_events
WHEN NEW.action = 'customer_create'
BEGIN SELECT RAISE(ABORT, 'refused by the database'); END
"""
REFUSE_POSTGRES = [
    """
    CREATE FUNCTION refuse_customer_create() RETURNS trigger AS $$
    BEGIN
        IF NEW.action = 'customer_create' THEN
            RAISE EXCEPTION 'refused by the database' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER refuse_customer_create BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION refuse_customer_create()
    """,
]


def _admin(crm: FaceCRM) -> str:
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "root", PASSWORD, "admin", principal=SYSTEM)
        return accounts.create_store(session, "A", "Store A", SYSTEM).id


def _token(url: str) -> dict[str, str]:
    answer = httpx.post(f"{url}/api/v1/auth/token", data={"username": "root", "password": PASSWORD})
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_a_failing_commit_is_an_error_response_and_stores_nothing(crm: FaceCRM) -> None:
    """The customer row is flushed by the route; the audit event is inserted only when the
    request's transaction commits (`auditchain.seal_pending`). A database that refuses that
    insert fails the commit: the client must get the error, not a 201, and nothing stays.
    (With the session dependency in FastAPI's default "request" scope the commit ran after
    the 201 had been sent: this test failed then.)"""
    _admin(crm)
    with serve(create_app(crm)) as url:
        auth = _token(url)
        with crm.engine.begin() as connection:
            if crm.engine.dialect.name == "sqlite":
                connection.exec_driver_sql(REFUSE_SQLITE)
            else:
                for statement in REFUSE_POSTGRES:
                    connection.exec_driver_sql(statement)
        answer = httpx.post(f"{url}/api/v1/customers", json={"name": "Never Stored"}, headers=auth)
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["reason"] == "conflict"
        # the request's other work is undone with it, and the server carries on
        assert httpx.get(f"{url}/api/v1/me", headers=auth).status_code == 200
    with crm.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 0
        created = select(func.count()).where(AuditEvent.action == "customer_create")
        assert session.scalar(created) == 0


def test_the_request_commits_before_the_response(crm: FaceCRM) -> None:
    """What a 201 announces is readable by anyone the moment the client has it."""
    _admin(crm)
    with serve(create_app(crm)) as url:
        answer = httpx.post(f"{url}/api/v1/customers", json={"name": "Ada"}, headers=_token(url))
        assert answer.status_code == 201
        with crm.sessions() as session:  # another connection, right after the response
            assert session.get(Customer, answer.json()["id"]) is not None


def test_an_open_alert_stream_holds_no_database_connection(crm: FaceCRM) -> None:
    """The principal is looked up in the request's session; that session is closed when the
    route returns, not when the stream (hours long) ends."""
    _admin(crm)
    with serve(create_app(crm)) as url:
        auth = _token(url)
        with httpx.stream("GET", f"{url}/api/v1/alerts/stream", headers=auth, timeout=10) as s:
            assert s.status_code == 200
            first = next(s.iter_lines())
            assert first.startswith("retry:")
            assert crm.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- permissions: every crm operation checks its own ----------------------------------

AUDITOR = Principal("staff", "aud", "auditor", "auditor", None)
ASSOCIATE = Principal("staff", "ass", "associate", "associate", None)
AGENT = Principal("device", "dev", "agent", "agent", None)

Call = Callable[[Session, FaceCRM, dict[str, str]], object]
NOW = datetime.now(UTC)
GRANT = ConsentGrant(Purpose.IN_STORE_RECOGNITION, "2026-11-v1", "kiosk")
F = Filters()

OPERATIONS: dict[str, tuple[Principal, Call]] = {
    "customers.create": (AUDITOR, lambda s, c, x: customers.create(s, AUDITOR, {"name": "X"})),
    "customers.update": (AGENT, lambda s, c, x: customers.update(s, AGENT, x["c"], {})),
    "customers.find": (AGENT, lambda s, c, x: customers.find(s, AGENT, "")),
    "customers.give_consent": (
        AUDITOR,
        lambda s, c, x: customers.give_consent(s, AUDITOR, x["c"], GRANT),
    ),
    "customers.withdraw_consent": (
        AUDITOR,
        lambda s, c, x: customers.withdraw_consent(s, AUDITOR, x["c"], GRANT.purpose),
    ),
    "customers.export": (ASSOCIATE, lambda s, c, x: customers.export(s, ASSOCIATE, x["c"])),
    "customers.identified": (AUDITOR, lambda s, c, x: customers.identified(s, AUDITOR, [])),
    "cards.card": (AGENT, lambda s, c, x: cards.card(s, AGENT, x["c"])),
    "activity.record_visit": (
        AUDITOR,
        lambda s, c, x: activity.record_visit(s, AUDITOR, x["c"], x["s"], "manual"),
    ),
    "activity.visits": (AGENT, lambda s, c, x: activity.visits(s, AGENT, F)),
    "activity.add_purchase": (
        AGENT,
        lambda s, c, x: activity.add_purchase(s, AGENT, x["c"], x["s"], [Item("1", "a", 1, 1)]),
    ),
    "activity.purchases": (AUDITOR, lambda s, c, x: activity.purchases(s, AUDITOR, F)),
    "activity.add_interest": (
        AGENT,
        lambda s, c, x: activity.add_interest(s, AGENT, x["c"], x["s"], "shoes"),
    ),
    "activity.update_interest": (
        AGENT,
        lambda s, c, x: activity.update_interest(s, AGENT, 1, resolved=True),
    ),
    "activity.interests": (AUDITOR, lambda s, c, x: activity.interests(s, AUDITOR, F)),
    "activity.add_feedback": (
        AUDITOR,
        lambda s, c, x: activity.add_feedback(s, AUDITOR, x["c"], x["s"], "ok", 5),
    ),
    "activity.resolve_feedback": (
        AUDITOR,
        lambda s, c, x: activity.resolve_feedback(s, AUDITOR, 1, True),
    ),
    "activity.feedback": (AGENT, lambda s, c, x: activity.feedback(s, AGENT, F)),
    "accounts.create_store": (
        ASSOCIATE,
        lambda s, c, x: accounts.create_store(s, "B", "B", ASSOCIATE),
    ),
    "accounts.list_stores": (AGENT, lambda s, c, x: accounts.list_stores(s, AGENT)),
    "accounts.create_staff": (
        ASSOCIATE,
        lambda s, c, x: accounts.create_staff(s, "eve", PASSWORD, "admin", principal=ASSOCIATE),
    ),
    "accounts.set_active": (
        ASSOCIATE,
        lambda s, c, x: accounts.set_active(s, ASSOCIATE, "root", active=False),
    ),
    "accounts.set_password": (
        ASSOCIATE,
        lambda s, c, x: accounts.set_password(s, ASSOCIATE, "root", PASSWORD + "!"),
    ),
    "accounts.delete_staff": (
        AUDITOR,
        lambda s, c, x: accounts.delete_staff(s, AUDITOR, "root"),
    ),
    "accounts.create_device": (
        ASSOCIATE,
        lambda s, c, x: accounts.create_device(s, x["s"], "agent", principal=ASSOCIATE),
    ),
    "accounts.revoke_device": (
        ASSOCIATE,
        lambda s, c, x: accounts.revoke_device(s, ASSOCIATE, x["d"]),
    ),
    "accounts.list_devices": (ASSOCIATE, lambda s, c, x: accounts.list_devices(s, ASSOCIATE)),
    "auditlog.read": (ASSOCIATE, lambda s, c, x: auditlog.read(s, ASSOCIATE, "test")),
    "auditlog.latest": (AGENT, lambda s, c, x: auditlog.latest(s, AGENT, "test")),
    "imports.export_csv": (ASSOCIATE, lambda s, c, x: imports.export_csv(s, ASSOCIATE)),
    "imports.import_csv": (
        ASSOCIATE,
        lambda s, c, x: imports.import_csv(c.sessions, ASSOCIATE, b"name\nEve\n"),
    ),
    "alerts.open_alerts": (AUDITOR, lambda s, c, x: AlertService(c).open_alerts(AUDITOR)),
    "alerts.claim": (AUDITOR, lambda s, c, x: AlertService(c).claim(AUDITOR, 1)),
    "alerts.acknowledge": (AGENT, lambda s, c, x: AlertService(c).acknowledge(AGENT, 1)),
    "alerts.start_shift": (AUDITOR, lambda s, c, x: AlertService(c).start_shift(AUDITOR, x["s"])),
    "alerts.end_shift": (AGENT, lambda s, c, x: AlertService(c).end_shift(AGENT, x["s"])),
    "alerts.ingest": (ASSOCIATE, lambda s, c, x: AlertService(c).ingest(ASSOCIATE, [None])),
    "alerts.configure_store": (
        ASSOCIATE,
        lambda s, c, x: AlertService(c).configure_store(
            ASSOCIATE, x["s"], RuleSettings(), None, None
        ),
    ),
}


@pytest.fixture()
def world(crm: FaceCRM) -> dict[str, str]:
    with db.transaction(crm.sessions) as session:
        accounts.create_staff(session, "root", PASSWORD, "admin", principal=SYSTEM)
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        device, _ = accounts.create_device(session, store.id, "pos", principal=SYSTEM)
        customer = customers.create(session, SYSTEM, {"name": "Ada"})
        customers.give_consent(session, SYSTEM, customer.id, GRANT)
        activity.add_interest(session, SYSTEM, customer.id, store.id, "shoes")
        activity.add_feedback(session, SYSTEM, customer.id, store.id, "slow", 2)
        return {"s": store.id, "c": customer.id, "d": device.id}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_crm_operations_refuse_a_principal_without_the_permission(
    crm: FaceCRM, world: dict[str, str], operation: str
) -> None:
    """Called directly (as the console, the CLI or a future caller would), not through a
    route's `allow()`: the operation itself refuses, and nothing is written or audited."""
    _, call = OPERATIONS[operation]  # the principal is named in the call
    with crm.sessions() as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(Forbidden), db.transaction(crm.sessions) as session:
        call(session, crm, world)
    with crm.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == before
        assert session.scalar(select(func.count()).select_from(Customer)) == 1


# -- the seam, statically -----------------------------------------------------------------

SESSION_BLOCK = re.compile(r"\.sessions\(\)|db\.transaction\(|\bsessions\.begin\(")


def test_routes_login_and_console_open_no_session_of_their_own() -> None:
    """Transactions belong to `deps.get_session` (the request's) and the crm layer."""
    files = [*(SRC / "api").rglob("*.py"), *(SRC / "web").rglob("*.py")]
    found = {
        f"{path.relative_to(SRC)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SESSION_BLOCK.search(line)
    }
    assert len(found) == 1 and next(iter(found)).startswith("api/deps.py:"), found


def test_routes_use_the_annotated_dependency_aliases() -> None:
    files = [*(SRC / "api" / "routes").glob("*.py"), SRC / "web" / "console.py"]
    offenders = [p.name for p in files if re.search(r"=\s*Depends\(", p.read_text())]
    assert offenders == []


def test_every_json_response_is_described(crm: FaceCRM) -> None:
    """Each success response of the API has a schema (typed `*Out` models), and every
    route declares its problem+json refusals."""
    schema = create_app(crm).openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            if path.startswith("/api/"):
                assert "application/problem+json" in answers["403"]["content"], where
            for status, answer in answers.items():
                json_body = answer.get("content", {}).get("application/json")
                if status.startswith("2") and json_body is not None:
                    assert json_body.get("schema"), f"{where} {status} has no schema"


def test_the_client_models_mirror_the_server_responses() -> None:
    """`facecrm.client` keeps its own models (it is vendorable: httpx and pydantic only), so
    each must name exactly the members the server's `*Out` model sends."""
    from facecrm import client
    from facecrm.api import schemas

    pairs = {
        client.Token: schemas.Token,
        client.Me: schemas.Me,
        client.CustomerSummary: schemas.CustomerSummary,
        client.Profile: schemas.CustomerOut,
        client.Consent: schemas.ConsentOut,
        client.ConsentText: schemas.ConsentTextOut,
        client.ConsentEvidence: schemas.ConsentEvidenceOut,
        client.Visit: schemas.VisitOut,
        client.Purchase: schemas.PurchaseOut,
        client.PurchaseItem: schemas.ItemOut,
        client.Interest: schemas.InterestOut,
        client.Feedback: schemas.FeedbackOut,
        client.Card: schemas.CardOut,
        client.TemplateMeta: schemas.TemplateMetaOut,
        client.Export: schemas.ExportOut,
        client.FaceAdded: schemas.FaceAddedOut,
        client.Box: schemas.BoxOut,
        client.IdentifiedCustomer: schemas.IdentifiedCustomerOut,
        client.IdentifiedFace: schemas.IdentifiedFaceOut,
        client.Identification: schemas.IdentifyOut,
        client.Verification: schemas.VerifyOut,
        client.Alert: schemas.AlertOut,
    }
    for mine, theirs in pairs.items():
        sent = {*theirs.model_fields, *theirs.model_computed_fields}
        assert set(mine.model_fields) == sent, mine.__name__
