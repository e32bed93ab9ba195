"""Customer data over the real API and console: export scope, face ownership, search
summaries, and what the API refuses (SQLite and PostgreSQL, real models and faces)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from facecrm.config import Settings
from facecrm.crm import accounts, activity, audit, customers, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.errors import InvalidError
from facecrm.crm.models import (
    AuditEvent,
    Consent,
    Customer,
    FaceTemplate,
    Feedback,
    Interest,
    Purchase,
    StaffUser,
    Visit,
)
from facecrm.crm.service import FaceCRM
from facecrm.logs import configure_logging
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

PASSWORD = "correct horse battery"
ROLES = ("admin", "manager", "associate", "associate_b")
WRITTEN = (Customer, Consent, FaceTemplate, Visit, Purchase, Interest, Feedback, StaffUser)


@dataclass
class Shop:
    url: str
    crm: FaceCRM
    store_a: str
    store_b: str
    tokens: dict[str, str]
    faces: Path
    agent_key: str

    def client(self, role: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.Client(base_url=self.url, headers=auth, timeout=60)

    def photo(self, relative: str) -> tuple[str, bytes, str]:
        path = self.faces / relative
        return (path.name, path.read_bytes(), "image/jpeg")

    def counts(self) -> dict[str, int]:
        with self.crm.sessions() as session:
            return {
                m.__name__: int(session.scalar(select(func.count()).select_from(m)) or 0)
                for m in WRITTEN
            }

    def events(self, action: str) -> list[AuditEvent]:
        with self.crm.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            return list(session.scalars(query))

    def customer(self, role: str, name: str, **fields: Any) -> str:
        """A customer with recognition consent and no face yet."""
        with self.client(role) as c:
            r = c.post("/api/v1/customers", json={"name": name, **fields})
            assert r.status_code == 201, r.text
            customer_id = str(r.json()["id"])
            consent = {"purpose": "in_store_recognition", "text_version": CURRENT}
            r = c.post(
                f"/api/v1/customers/{customer_id}/consents", json={**consent, "channel": "kiosk"}
            )
            assert r.status_code == 201, r.text
        return customer_id

    def add_face(self, role: str, customer_id: str, photo: str, **form: str) -> httpx.Response:
        with self.client(role) as c:
            return c.post(
                f"/api/v1/customers/{customer_id}/faces",
                files={"image": self.photo(photo)},
                data=form,
            )


@pytest.fixture(scope="module")
def shop(module_settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[Shop]:
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM)
        b = accounts.create_store(session, "B", "Store B", SYSTEM)
        store_a, store_b = a.id, b.id
        for role in ROLES:
            stores = [] if role == "admin" else [store_b if role.endswith("_b") else store_a]
            accounts.create_staff(
                session, role, PASSWORD, role.split("_")[0], stores, principal=SYSTEM
            )
        _, agent_key = accounts.create_device(session, store_a, "agent", principal=SYSTEM)
    with serve(create_app(crm)) as url:
        tokens = {
            role: httpx.post(
                f"{url}/api/v1/auth/token", data={"username": role, "password": PASSWORD}
            ).json()["access_token"]
            for role in ROLES
        }
        yield Shop(url, crm, store_a, store_b, tokens, faces_dir, agent_key)
    crm.engine.dispose()


# -- item 5: the data-subject export is chain-wide, so it is for admins only ---------------


def test_export_is_for_admins_and_complete(shop: Shop) -> None:
    ada = shop.customer("associate", "Ada Export")
    for role, store in (("associate", shop.store_a), ("associate_b", shop.store_b)):
        with shop.client(role) as c:
            r = c.post("/api/v1/visits", json={"customer_id": ada, "store_id": store})
            assert r.status_code == 201, r.text
    before = len(shop.events("customer_export"))
    with shop.client("manager") as c:
        refused = c.get(f"/api/v1/customers/{ada}/export")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert "Store B" not in refused.text and shop.store_b not in refused.text
    with shop.client("admin") as c:
        export = c.get(f"/api/v1/customers/{ada}/export")
    assert export.status_code == 200
    assert {v["store_id"] for v in export.json()["visits"]} == {shop.store_a, shop.store_b}
    events = shop.events("customer_export")
    assert len(events) == before + 1
    assert events[-1].customer_id == ada and events[-1].actor == "staff:admin"


# -- item 9: a face joins a customer only if it is theirs ----------------------------------


def test_another_persons_photo_is_refused(shop: Shop) -> None:
    rose = shop.customer("associate", "Rose Face")
    assert shop.add_face("associate", rose, "identities/rose_leslie/1.jpg").status_code == 201
    before = shop.counts()
    r = shop.add_face("associate", rose, "identities/kit_harington/1.jpg")
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "face_mismatch"
    assert shop.counts() == before
    second = shop.add_face("associate", rose, "identities/rose_leslie/2.jpg")
    assert second.status_code == 201, second.text
    # the override: associates may not, managers may with a reason, and it is audited
    r = shop.add_face(
        "associate", rose, "identities/kit_harington/1.jpg", override="true", reason="new look"
    )
    assert r.status_code == 403
    r = shop.add_face("manager", rose, "identities/kit_harington/1.jpg", override="true")
    assert r.status_code == 422  # no reason given
    r = shop.add_face(
        "manager", rose, "identities/kit_harington/1.jpg", override="true", reason="stage make-up"
    )
    assert r.status_code == 201, r.text
    (override,) = [e for e in shop.events("face_override") if e.customer_id == rose]
    assert override.actor == "staff:manager" and override.detail["reason"] == "stage make-up"
    shop.crm.delete_customer(rose, SYSTEM)  # clean up: Kit's face must not stay Rose's


def test_a_face_enrolled_under_another_customer_is_refused(shop: Shop) -> None:
    owner = shop.customer("associate", "Barack Owner")
    assert shop.add_face("associate", owner, "identities/barack_obama/1.jpg").status_code == 201
    impostor = shop.customer("associate_b", "Someone Else")
    before = shop.counts()
    r = shop.add_face("associate_b", impostor, "identities/barack_obama/3.jpg")
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == "already_enrolled"
    assert "Barack" not in r.text and owner not in r.text  # never says whose face it is
    assert shop.counts() == before
    event = shop.events("enroll_duplicate")[-1]
    assert event.customer_id == owner and event.detail["target"] == impostor
    # the console's one-step enrollment: all or nothing, not even a customer row
    with httpx.Client(base_url=shop.url, timeout=60) as browser:
        browser.get("/console/login")
        csrf = browser.cookies["facecrm_csrf"]
        login = {"username": "associate", "password": PASSWORD, "csrf": csrf}
        assert browser.post("/console/login", data=login).status_code == 303
        r = browser.post(
            "/console/enroll",
            data={"name": "Barack Twice", "consent": "true", "consent_version": CURRENT},
            files={"image": shop.photo("identities/barack_obama/3.jpg")},
            headers={"X-CSRF-Token": csrf},
        )
    assert r.status_code == 409, r.text
    assert r.json()["reason"] == "already_enrolled" and "Barack Owner" not in r.text
    assert shop.counts() == before


# -- item 11: search lists summaries; the query and the ids are audited ---------------------


def test_search_returns_summaries_and_audits_query_and_ids(shop: Shop) -> None:
    ids = {
        shop.customer(
            "associate",
            f"Searchable Person {n}",
            email=f"p{n}@shop-mail.com",
            phone="+33 1 23 45 67 89",
            notes="allergic to wool",
            preferences={"size": "38"},
        )
        for n in range(3)
    }
    with shop.client("associate") as c:
        r = c.get("/api/v1/customers", params={"q": "searchable person", "limit": 200})
    assert r.status_code == 200
    rows = r.json()
    assert {row["id"] for row in rows} == ids
    for row in rows:
        assert set(row) == {"id", "name", "preferred_name", "tier", "loyalty_id"}
    assert "shop-mail.com" not in r.text and "wool" not in r.text and "+33" not in r.text
    event = shop.events("customer_search")[-1]
    # the text (a name, an e-mail) would outlive an erasure in the sealed trail: only its
    # keyed fingerprint is kept, which `facecrm audit fingerprint TEXT` reproduces
    with shop.crm.sessions() as session:
        expected = audit.fingerprint(session, "Searchable  PERSON")
    assert event.detail["query_fingerprint"] == expected and "query" not in event.detail
    assert "searchable" not in json.dumps(event.detail).lower()
    assert set(event.detail["ids"]) == ids and event.detail["results"] == 3
    # the console's search page shows the same summary and is audited the same way
    with httpx.Client(base_url=shop.url, timeout=60) as browser:
        browser.get("/console/login")
        csrf = browser.cookies["facecrm_csrf"]
        login = {"username": "associate", "password": PASSWORD, "csrf": csrf}
        assert browser.post("/console/login", data=login).status_code == 303
        page = browser.get("/console/customers", params={"q": "Searchable"})
    assert page.status_code == 200 and "Searchable Person 0" in page.text
    assert "shop-mail.com" not in page.text
    event = shop.events("customer_search")[-1]
    with shop.crm.sessions() as session:
        expected = audit.fingerprint(session, "searchable")
    assert event.detail["query_fingerprint"] == expected and event.detail["channel"] == "console"
    assert set(event.detail["ids"]) == ids


def test_access_log_lines_carry_no_search_query() -> None:
    configure_logging()
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    handler = Keep()
    access.addHandler(handler)
    try:  # what uvicorn logs for every request
        access.warning(
            '%s - "%s %s HTTP/%s" %d',
            "10.0.0.1:5000",
            "GET",
            "/api/v1/customers?q=ada+lovelace",
            "1.1",
            200,
        )
    finally:
        access.removeHandler(handler)
    assert lines == ['10.0.0.1:5000 - "GET /api/v1/customers HTTP/1.1" 200']


# -- item 19: hostile or sloppy input is refused and changes nothing ------------------------

Call = Callable[[httpx.Client, Shop, str], httpx.Response]
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


def _visit(**body: object) -> Call:
    return lambda c, s, who: c.post(
        "/api/v1/visits", json={"customer_id": who, "store_id": s.store_a, **body}
    )


def _purchase(item: dict[str, object] | None = None, **body: object) -> Call:
    line = {"sku": "S1", "name": "Scarf", "quantity": 1, "unit_price_cents": 100, **(item or {})}
    return lambda c, s, who: c.post(
        f"/api/v1/customers/{who}/purchases",
        json={"store_id": s.store_a, "items": [line], **body},
    )


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


BAD: list[tuple[str, Call]] = [
    (
        "deeply nested preferences",
        lambda c, s, who: c.patch(
            f"/api/v1/customers/{who}", json={"preferences": {"k": _nested(300)}}
        ),
    ),
    (
        "nested preference object",
        lambda c, s, who: c.patch(
            f"/api/v1/customers/{who}", json={"preferences": {"k": {"a": "b"}}}
        ),
    ),
    ("visit at year 1 east of UTC", _visit(at="0001-01-01T00:30:00+14:00")),
    ("visit before 1900", _visit(at="1899-12-31T12:00:00+00:00")),
    ("purchase at year 9999 west of UTC", _purchase(at="9999-12-31T23:59:59-14:00")),
    (
        "visits since year 1 east of UTC",
        lambda c, s, who: c.get("/api/v1/visits", params={"since": "0001-01-01T00:00:00+14:00"}),
    ),
    (
        "purchases until year 9999 west of UTC",
        lambda c, s, who: c.get("/api/v1/purchases", params={"until": "9999-12-31T23:59:59-14:00"}),
    ),
    (
        "password of zero-width spaces",
        lambda c, s, who: c.post(
            "/api/v1/staff",
            json={"username": "invisible", "password": "\u200b" * 12, "role": "auditor"},
        ),
    ),
    (
        "unknown consent text",
        lambda c, s, who: c.post(
            f"/api/v1/customers/{who}/consents",
            json={"purpose": "marketing", "text_version": "v1", "channel": "kiosk"},
        ),
    ),
    ("visit in the future", _visit(at=FUTURE)),
    ("visit in year 9999", _visit(at="9999-12-31T00:00:00+00:00")),
    ("visit without time zone", _visit(at="2026-11-20T10:00:00")),
    ("staff posing as the agent", _visit(source="agent")),
    ("similarity as text", _visit(similarity="0.9")),
    ("quantity as text", _purchase({"quantity": "2"})),
    ("quantity as a float", _purchase({"quantity": 2.0})),
    ("quantity as true", _purchase({"quantity": True})),
    ("quantity zero", _purchase({"quantity": 0})),
    ("quantity too large", _purchase({"quantity": 10_001})),
    ("negative price", _purchase({"unit_price_cents": -1})),
    ("price too large", _purchase({"unit_price_cents": 10**9 + 1})),
    (
        "total too large",
        _purchase({"quantity": 10_000, "unit_price_cents": 10**9}),
    ),
    ("bad currency", _purchase(currency="€€€")),
    ("purchase in the future", _purchase(at=FUTURE)),
    ("item name too long", _purchase({"name": "x" * 201})),
    ("sku too long", _purchase({"sku": "x" * 65})),
    (
        "too many preferences",
        lambda c, s, who: c.patch(
            f"/api/v1/customers/{who}", json={"preferences": {f"k{i}": 1 for i in range(51)}}
        ),
    ),
    (
        "preference name too long",
        lambda c, s, who: c.patch(f"/api/v1/customers/{who}", json={"preferences": {"k" * 65: 1}}),
    ),
    (
        "preferences too big",
        lambda c, s, who: c.patch(
            f"/api/v1/customers/{who}", json={"preferences": {"size": "x" * 5000}}
        ),
    ),
    (
        "notes too long",
        lambda c, s, who: c.patch(f"/api/v1/customers/{who}", json={"notes": "x" * 10_001}),
    ),
    (
        "show_photo as 1",
        lambda c, s, who: c.patch(f"/api/v1/customers/{who}", json={"show_photo": 1}),
    ),
    (
        "rating as text",
        lambda c, s, who: c.post(
            f"/api/v1/customers/{who}/feedback", json={"store_id": s.store_a, "rating": "2"}
        ),
    ),
    (
        "feedback text too long",
        lambda c, s, who: c.post(
            f"/api/v1/customers/{who}/feedback", json={"store_id": s.store_a, "text": "x" * 10_001}
        ),
    ),
    (
        "out_of_stock as text",
        lambda c, s, who: c.post(
            f"/api/v1/customers/{who}/interests",
            json={"store_id": s.store_a, "product": "Boots", "out_of_stock": "yes"},
        ),
    ),
    (
        "store id too long",
        lambda c, s, who: c.post(
            f"/api/v1/customers/{who}/interests", json={"store_id": "x" * 33, "product": "Boots"}
        ),
    ),
    (
        "password of spaces",
        lambda c, s, who: c.post(
            "/api/v1/staff", json={"username": "blank", "password": " " * 12, "role": "auditor"}
        ),
    ),
    (
        "display name too long",
        lambda c, s, who: c.post(
            "/api/v1/staff",
            json={
                "username": "long",
                "password": PASSWORD,
                "role": "auditor",
                "display_name": "x" * 201,
            },
        ),
    ),
]


@pytest.fixture(scope="module")
def target(shop: Shop) -> str:
    return shop.customer("admin", "Validation Target")


@pytest.mark.parametrize(("case", "call"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_and_changes_nothing(
    shop: Shop, target: str, case: str, call: Call
) -> None:
    before = shop.counts()
    with shop.client("admin" if "password" in case or "display" in case else "manager") as c:
        with shop.crm.sessions() as session:
            customer_before = session.get(Customer, target)
            assert customer_before is not None
            profile_before = (customer_before.preferences, customer_before.notes)
        r = call(c, shop, target)
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert shop.counts() == before
    with shop.crm.sessions() as session:
        customer = session.get(Customer, target)
        assert customer is not None and (customer.preferences, customer.notes) == profile_before


def test_good_input_still_passes(shop: Shop, target: str) -> None:
    """The same calls with sane values succeed (the table above is not refusing everything)."""
    with shop.client("manager") as c:
        assert _visit(at=datetime.now(UTC).isoformat())(c, shop, target).status_code == 201
        assert _purchase({"quantity": 2})(c, shop, target).status_code == 201
        prefs = {"size": "38", "colours": ["red", "navy"], "vegan": True, "fit": 1.5}
        r = c.patch(f"/api/v1/customers/{target}", json={"preferences": prefs})
        assert r.status_code == 200, r.text


def test_agent_may_say_agent_and_a_future_event_is_rejected(shop: Shop, target: str) -> None:
    with httpx.Client(base_url=shop.url, headers={"X-API-Key": shop.agent_key}) as agent:
        ok = _visit(source="agent")(agent, shop, target)
        assert ok.status_code == 201, ok.text
        before = shop.counts()
        event = {"type": "visit", "customer_id": target, "similarity": 0.9}
        r = agent.post(
            "/api/v1/agent/events",
            json={"events": [{**event, "key": "future-event-1", "at": FUTURE}]},
        )
    assert r.status_code == 200 and r.json()["outcomes"] == ["rejected"]
    assert shop.counts() == before


def test_time_zone_offsets_are_kept(shop: Shop, target: str) -> None:
    at = "2026-11-20T10:00:00+05:00"
    with shop.client("manager") as c:
        r = _visit(at=at)(c, shop, target)
        assert r.status_code == 201, r.text
        assert datetime.fromisoformat(r.json()["at"]) == datetime(2026, 11, 20, 5, tzinfo=UTC)
        visit_id = r.json()["id"]
        listed = c.get(
            "/api/v1/visits",
            params={
                "customer_id": target,
                "since": "2026-11-20T04:59:00Z",
                "until": "2026-11-20T05:01:00Z",
            },
        ).json()
    assert [v["id"] for v in listed] == [visit_id]
    assert listed[0]["at"] == "2026-11-20T05:00:00+00:00"
    with shop.crm.sessions() as session:  # read back through the ORM: aware UTC
        visit = session.get(Visit, visit_id)
        assert visit is not None and visit.at == datetime(2026, 11, 20, 5, tzinfo=UTC)
        assert visit.at.utcoffset() == timedelta(0)


def test_service_refuses_future_visits_and_keeps_offsets(crm: FaceCRM) -> None:
    """The rules hold below the API too (CLI, agents, any other caller)."""
    from facecrm.crm.errors import InvalidError

    offset = datetime.fromisoformat("2026-11-20T07:00:00-03:00")  # 10:00 UTC
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "S", "S", SYSTEM)
        customer = Customer(name="Tz")
        session.add(customer)
        session.flush()
        ids = (store.id, customer.id)
    with pytest.raises(InvalidError), db.transaction(crm.sessions) as session:
        activity.record_visit(
            session, SYSTEM, ids[1], ids[0], "manual", at=datetime(9999, 12, 31, tzinfo=UTC)
        )
    with db.transaction(crm.sessions) as session:
        visit_id = activity.record_visit(session, SYSTEM, ids[1], ids[0], "manual", at=offset).id
    with crm.sessions() as session:
        visit = session.get(Visit, visit_id)
        assert visit is not None
        assert visit.at == datetime(2026, 11, 20, 10, tzinfo=UTC)
        assert visit.at.tzinfo is not None and visit.at.utcoffset() == timedelta(0)
        assert session.scalar(select(func.count()).select_from(Visit)) == 1


def test_the_service_checks_e_mail_addresses_for_every_path(crm: FaceCRM) -> None:
    """The console's enrollment form reaches `customers.create` without the API's schema."""
    with db.transaction(crm.sessions) as session:
        with pytest.raises(InvalidError):
            customers.create(session, SYSTEM, {"name": "X", "email": "not-an-email <script>"})
        made = customers.create(session, SYSTEM, {"name": "Y", "email": "Ada@Example.COM"})
        assert made.email == "Ada@example.com"  # the domain is normalised
