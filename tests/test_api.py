"""The REST API over a real HTTP server, real models and a real database."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from facecrm.config import Settings
from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import AuditEvent, Customer, FaceTemplate
from facecrm.crm.service import FaceCRM
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

PASSWORD = "correct horse battery"


@dataclass
class Chain:
    """A running server with two stores and one account per role."""

    url: str
    crm: FaceCRM
    store_a: str
    store_b: str
    tokens: dict[str, str]
    faces: Path

    def client(self, role: str | None = "admin", **headers: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers={**auth, **headers}, timeout=60)

    def photo(self, relative: str) -> tuple[str, bytes, str]:
        path = self.faces / relative
        return (path.name, path.read_bytes(), "image/jpeg")

    def templates_of(self, customer_id: str) -> int:
        with self.crm.sessions() as session:
            query = select(func.count()).where(FaceTemplate.customer_id == customer_id)
            return int(session.scalar(query) or 0)

    def count(self, model: type) -> int:
        with self.crm.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture(scope="module")
def chain(module_settings: Settings, pipeline: FacePipeline, faces_dir: Path) -> Iterator[Chain]:
    """One server per module and backend; tests create what they need under their own names."""
    crm = FaceCRM(module_settings, pipeline=pipeline)
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM)
        b = accounts.create_store(session, "B", "Store B", SYSTEM)
        store_a, store_b = a.id, b.id
        for role, stores in (
            ("admin", []),
            ("manager", [store_a]),
            ("associate", [store_a]),
            ("auditor", []),
            ("associate_b", [store_b]),
        ):
            accounts.create_staff(
                session, role, PASSWORD, role.split("_")[0], stores, principal=SYSTEM
            )
    with serve(create_app(crm)) as url:
        tokens = {}
        for role in ("admin", "manager", "associate", "auditor", "associate_b"):
            r = httpx.post(
                f"{url}/api/v1/auth/token", data={"username": role, "password": PASSWORD}
            )
            assert r.status_code == 200, r.text
            tokens[role] = r.json()["access_token"]
        yield Chain(url, crm, store_a, store_b, tokens, faces_dir)
    crm.engine.dispose()


def _enroll(chain: Chain, name: str, photo: str, role: str = "associate") -> str:
    with chain.client(role) as c:
        customer = c.post("/api/v1/customers", json={"name": name, "tier": "gold"}).json()
        r = c.post(
            f"/api/v1/customers/{customer['id']}/consents",
            json={
                "purpose": "in_store_recognition",
                "text_version": CURRENT,
                "channel": "kiosk",
                "store_id": chain.store_a,
            },
        )
        assert r.status_code == 201, r.text
        r = c.post(f"/api/v1/customers/{customer['id']}/faces", files={"image": chain.photo(photo)})
        assert r.status_code == 201, r.text
        return str(customer["id"])


def test_login(chain: Chain) -> None:
    ok = httpx.post(
        f"{chain.url}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}
    )
    assert ok.status_code == 200 and ok.json()["token_type"] == "bearer"
    bad = httpx.post(
        f"{chain.url}/api/v1/auth/token", data={"username": "admin", "password": "nope"}
    )
    assert bad.status_code == 401
    assert bad.headers["content-type"] == "application/problem+json"
    with chain.client("associate") as c:
        assert c.get("/api/v1/me").json()["stores"] == [chain.store_a]


def test_openapi_is_served(chain: Chain) -> None:
    # generating the document costs ~1.5 s of CPU once (then FastAPI caches it): 5 s of
    # httpx's default timeout is too short on a machine under load
    spec = httpx.get(f"{chain.url}/openapi.json", timeout=60).json()
    assert (
        "/api/v1/identify" in spec["paths"]
        and "/api/v1/customers/{customer_id}/export" in spec["paths"]
    )


def test_enrolled_in_store_a_recognised_in_store_b(chain: Chain) -> None:
    barack = _enroll(chain, "Barack", "identities/barack_obama/1.jpg")
    with chain.client("associate_b") as c:
        r = c.post(
            "/api/v1/identify",
            files={"image": chain.photo("scenes/obama_and_biden.jpg")},
            data={"store_id": chain.store_b},
        )
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    named = [f["customer"] for f in faces if f["customer"] != "unknown"]
    assert [n["id"] for n in named] == [barack]
    assert named[0]["similarity"] >= r.json()["threshold"]
    assert all(set(f["box"]) == {"x", "y", "width", "height"} for f in faces)
    assert len(faces) > len(named)  # Biden: unknown


def test_no_template_without_consent(chain: Chain) -> None:
    with chain.client("associate") as c:
        customer = c.post("/api/v1/customers", json={"name": "No Consent"}).json()
        r = c.post(
            f"/api/v1/customers/{customer['id']}/faces",
            files={"image": chain.photo("identities/rose_leslie/1.jpg")},
        )
    assert r.status_code == 409 and r.json()["reason"] == "consent_required"
    assert chain.templates_of(customer["id"]) == 0


def test_withdrawal_deletes_templates_and_keeps_history(chain: Chain) -> None:
    rose = _enroll(chain, "Rose", "identities/rose_leslie/1.jpg")
    with chain.client("associate") as c:
        assert (
            c.delete(f"/api/v1/customers/{rose}/consents/in_store_recognition").status_code == 204
        )
        r = c.post(
            "/api/v1/identify",
            files={"image": chain.photo("identities/rose_leslie/2.jpg")},
            data={"store_id": chain.store_a},
        )
        assert [f["customer"] for f in r.json()["faces"]] == ["unknown"]
        card = c.get(f"/api/v1/customers/{rose}").json()
    assert card["templates"] == 0
    assert [(x["purpose"], x["active"]) for x in card["consents"]] == [
        ("in_store_recognition", False)
    ]
    assert chain.templates_of(rose) == 0


def test_quality_gate_reason(chain: Chain) -> None:
    with chain.client("associate") as c:
        customer = c.post("/api/v1/customers", json={"name": "Two"}).json()
        c.post(
            f"/api/v1/customers/{customer['id']}/consents",
            json={"purpose": "in_store_recognition", "text_version": CURRENT, "channel": "kiosk"},
        )
        r = c.post(
            f"/api/v1/customers/{customer['id']}/faces",
            files={"image": chain.photo("scenes/two_people.jpg")},
        )
    assert r.status_code == 422 and r.json()["reason"] == "multiple_faces"
    assert chain.templates_of(customer["id"]) == 0


def test_verify(chain: Chain) -> None:
    kit = _enroll(chain, "Kit", "identities/kit_harington/1.jpg")
    with chain.client("associate") as c:
        same = c.post(
            "/api/v1/verify",
            data={"customer_id": kit},
            files={"image": chain.photo("identities/kit_harington/2.jpg")},
        ).json()
        other = c.post(
            "/api/v1/verify",
            data={"customer_id": kit},
            files={"image": chain.photo("distractors/paul_rudd.jpg")},
        ).json()
    assert same["match"] is True and other["match"] is False


def test_activity_card_export_and_erasure(chain: Chain) -> None:
    rose = _enroll(chain, "Rose", "identities/rose_leslie/1.jpg")
    with chain.client("associate") as c:
        assert (
            c.post(
                "/api/v1/visits", json={"customer_id": rose, "store_id": chain.store_a}
            ).status_code
            == 201
        )
        p = c.post(
            f"/api/v1/customers/{rose}/purchases",
            json={
                "store_id": chain.store_a,
                "items": [{"sku": "S1", "name": "Scarf", "quantity": 2, "unit_price_cents": 2500}],
            },
        )
        assert p.status_code == 201 and p.json()["total_cents"] == 5000
        i = c.post(
            f"/api/v1/customers/{rose}/interests",
            json={"store_id": chain.store_a, "product": "Red boots 38", "out_of_stock": True},
        )
        assert i.status_code == 201
        f = c.post(
            f"/api/v1/customers/{rose}/feedback",
            json={"store_id": chain.store_a, "text": "Long queue", "rating": 2},
        )
        assert f.status_code == 201
        card = c.get(f"/api/v1/customers/{rose}").json()
        assert card["open_interests"][0]["product"] == "Red boots 38"
        assert card["open_feedback"][0]["rating"] == 2
        visits = c.get("/api/v1/visits", params={"customer_id": rose}).json()
        assert len(visits) == 1
        assert c.get(f"/api/v1/customers/{rose}/export").status_code == 403  # associates may not
    with chain.client("associate_b") as c:  # another store's associate sees none of it
        assert c.get("/api/v1/visits", params={"customer_id": rose}).json() == []
        assert c.get(f"/api/v1/customers/{rose}").json()["purchases"] == []
    with chain.client("admin") as c:  # the export is chain-wide: admins only
        export = c.get(f"/api/v1/customers/{rose}/export").json()
        assert export["customer"]["name"] == "Rose" and len(export["purchases"]) == 1
        assert "vector" not in str(export["face_templates"][0]["id"])
    with chain.client("manager") as c:
        assert c.delete(f"/api/v1/customers/{rose}").status_code == 204
        assert c.get(f"/api/v1/customers/{rose}").status_code == 404
        r = c.post("/api/v1/identify", files={"image": chain.photo("identities/rose_leslie/2.jpg")})
        assert [x["customer"] for x in r.json()["faces"]] == ["unknown"]
    assert chain.templates_of(rose) == 0
    with chain.crm.sessions() as session:
        assert session.get(Customer, rose) is None
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"customer_export", "erase", "lookup", "identify_summary", "login"} <= actions


def test_device_key(chain: Chain) -> None:
    with chain.client("manager") as c:
        r = c.post("/api/v1/devices", json={"store_id": chain.store_a, "kind": "agent"})
        assert r.status_code == 201
        key = r.json()["api_key"]
        assert (
            c.post("/api/v1/devices", json={"store_id": chain.store_b, "kind": "agent"}).status_code
            == 403
        )
        listing = c.get("/api/v1/devices")
        assert listing.status_code == 200 and listing.json()
        # the key is shown once: never again, neither itself, nor its hash, nor a key-ish field
        assert key not in listing.text and accounts.hash_key(key) not in listing.text
        assert key.removeprefix(accounts.DEVICE_KEY_PREFIX) not in listing.text
        named_like_a_key = [
            field
            for device in listing.json()
            for field in device
            if re.search("key|hash|secret|token", field, re.IGNORECASE)
        ]
        assert named_like_a_key == []
    with httpx.Client(base_url=chain.url, headers={"X-API-Key": key}) as device:
        r = device.post(
            "/api/v1/identify", files={"image": chain.photo("distractors/paul_rudd.jpg")}
        )
        assert r.status_code == 200 and r.json()["faces"][0]["customer"] == "unknown"
        other = device.post(
            "/api/v1/identify",
            data={"store_id": chain.store_b},
            files={"image": chain.photo("distractors/paul_rudd.jpg")},
        )
        assert other.status_code == 403
        assert device.get("/api/v1/customers").status_code == 403
    with httpx.Client(base_url=chain.url, headers={"X-API-Key": "fcd_wrong"}) as bad:
        assert bad.get("/api/v1/me").status_code == 401


BAD: list[tuple[str, Callable[[httpx.Client, Chain], httpx.Response], int]] = [
    ("no token", lambda c, ch: httpx.get(f"{ch.url}/api/v1/customers"), 401),
    (
        "garbage token",
        lambda c, ch: httpx.get(
            f"{ch.url}/api/v1/customers", headers={"Authorization": "Bearer x.y.z"}
        ),
        401,
    ),
    ("unknown id", lambda c, ch: c.get("/api/v1/customers/nope"), 404),
    (
        "malformed json",
        lambda c, ch: c.post(
            "/api/v1/customers", content=b"{bad", headers={"content-type": "application/json"}
        ),
        400,
    ),
    ("wrong field type", lambda c, ch: c.post("/api/v1/customers", json={"name": 5}), 422),
    (
        "unknown field",
        lambda c, ch: c.post("/api/v1/customers", json={"name": "x", "evil": 1}),
        422,
    ),
    ("json to upload", lambda c, ch: c.post("/api/v1/identify", json={"image": "x"}), 415),
    (
        "not an image",
        lambda c, ch: c.post(
            "/api/v1/identify", files={"image": ("x.jpg", b"hello", "image/jpeg")}
        ),
        422,
    ),
    (
        "empty image",
        lambda c, ch: c.post("/api/v1/identify", files={"image": ("x.jpg", b"", "image/jpeg")}),
        422,
    ),
    ("wrong role", lambda c, ch: c.post("/api/v1/stores", json={"code": "Z", "name": "Z"}), 403),
    # PostgreSQL text cannot hold NUL: refused up front, not a 500 from the driver
    ("NUL in a name", lambda c, ch: c.post("/api/v1/customers", json={"name": "a\u0000b"}), 422),
    (
        "NUL in a search",
        lambda c, ch: c.get("/api/v1/customers", params={"q": "a\u0000b"}),
        422,
    ),
    # ids beyond PostgreSQL's 32-bit integer columns: refused, not a 500 from the database
    ("alert id over int4", lambda c, ch: c.post(f"/api/v1/alerts/{2**40}/claim"), 422),
    ("interest id over int4", lambda c, ch: c.patch(f"/api/v1/interests/{2**31}", json={}), 422),
    (
        "other store",
        lambda c, ch: c.post("/api/v1/visits", json={"customer_id": "x", "store_id": ch.store_b}),
        403,
    ),
]


@pytest.mark.parametrize(("case", "call", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests(chain: Chain, case: str, call: Callable, status: int) -> None:
    before = (chain.count(Customer), chain.count(FaceTemplate))
    with chain.client("associate") as c:
        r = call(c, chain)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status
    assert (chain.count(Customer), chain.count(FaceTemplate)) == before


def test_oversized_upload(chain: Chain) -> None:
    big = b"\xff\xd8" + b"\0" * (chain.crm.settings.max_upload_bytes + 200_000)
    with chain.client("associate") as c:
        r = c.post("/api/v1/identify", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


def test_duplicate_loyalty_id(chain: Chain) -> None:
    with chain.client("associate") as c:
        assert (
            c.post("/api/v1/customers", json={"name": "A", "loyalty_id": "L1"}).status_code == 201
        )
        before = chain.count(Customer)
        r = c.post("/api/v1/customers", json={"name": "B", "loyalty_id": "L1"})
    assert r.status_code == 409
    assert chain.count(Customer) == before


def test_expired_token(chain: Chain) -> None:
    from facecrm.api.security import issue_token

    with chain.crm.sessions() as session:
        admin = accounts.authenticate(session, "admin", PASSWORD)
    assert admin is not None
    expired = issue_token(chain.crm.settings, admin.id, minutes=-1)
    r = httpx.get(f"{chain.url}/api/v1/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401


def test_audit_trail_for_auditors_only(chain: Chain) -> None:
    with chain.client("auditor") as c:
        events = c.get("/api/v1/audit", params={"action": "login"}).json()
        assert events and all(e["action"] == "login" and e["hash"] for e in events)
        verified = c.get("/api/v1/audit/verify").json()
        assert verified["ok"] is True and verified["checked"] > 0
        assert c.get("/api/v1/customers").status_code == 403  # auditors see no customers
    with chain.client("associate") as c:
        assert c.get("/api/v1/audit").status_code == 403


def test_console_csrf_and_security_headers(chain: Chain) -> None:
    with httpx.Client(base_url=chain.url) as browser:
        page = browser.get("/console/login")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        csrf = browser.cookies["facecrm_csrf"]
        forged = browser.post(
            "/console/login",
            data={"username": "admin", "password": PASSWORD, "csrf": "not-the-token"},
        )
        assert forged.status_code == 403
        ok = browser.post(
            "/console/login", data={"username": "admin", "password": PASSWORD, "csrf": csrf}
        )
        assert ok.status_code == 303
        session = ok.cookies.get("facecrm_session") or browser.cookies.get("facecrm_session")
        assert session
        no_token = browser.post(
            "/console/enroll",
            data={"name": "x", "consent": "true"},
            files={"image": ("x.jpg", b"x", "image/jpeg")},
        )
        assert no_token.status_code == 403  # state changes need the CSRF header


def test_store_rules_and_shifts(chain: Chain) -> None:
    with chain.client("manager") as c:
        path = f"/api/v1/stores/{chain.store_a}/config"
        ok = c.put(path, json={"rules": {"vip_arrival": {"enabled": False}}})
        assert ok.status_code == 200 and ok.json()["rules"]["vip_arrival"]["enabled"] is False
        assert c.put(path, json={"rules": {"astrology": {}}}).status_code == 422
        half = c.put(path, json={"webhook_url": "https://example.test/hook"})
        assert half.status_code == 422
    with chain.client("associate") as c:
        shift = c.post(f"/api/v1/shifts/{chain.store_a}")
        assert shift.status_code == 201 and shift.json()["store_id"] == chain.store_a
        assert c.delete(f"/api/v1/shifts/{chain.store_a}").status_code == 204
        assert c.post(f"/api/v1/shifts/{chain.store_b}").status_code == 403
        assert c.delete(f"/api/v1/shifts/{chain.store_b}").status_code == 403
