"""Consent texts the chain owns and consent evidence the server fills in (SQLite and
PostgreSQL; the crm layer directly, then the real API over a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from facecrm.config import Settings
from facecrm.crm import accounts, consent_text, customers, db, enrollment
from facecrm.crm.authz import SYSTEM, Principal
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.customers import ConsentGrant
from facecrm.crm.errors import InvalidError
from facecrm.crm.models import AuditEvent, Consent, ConsentText, Customer, Purpose
from facecrm.crm.service import FaceCRM, Photo
from facecrm.errors import Forbidden
from facecrm.server import create_app
from facecrm.vision.pipeline import FacePipeline

from server import serve

RECOGNITION = Purpose.IN_STORE_RECOGNITION
PASSWORD = "correct horse battery"


@dataclass
class World:
    crm: FaceCRM
    a: str  # store A
    b: str  # store B
    customer: str

    def staff(self, name: str, *stores: str, role: str = "associate") -> Principal:
        return Principal("staff", f"id-{name}", name, role, frozenset(stores))

    def counts(self) -> tuple[int, int, int]:
        with self.crm.sessions() as session:
            return tuple(  # type: ignore[return-value]
                int(session.scalar(select(func.count()).select_from(m)) or 0)
                for m in (Consent, ConsentText, AuditEvent)
            )


@pytest.fixture()
def world(crm: FaceCRM) -> World:
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM).id
        b = accounts.create_store(session, "B", "Store B", SYSTEM).id
        customer = customers.create(session, SYSTEM, {"name": "Rose Leslie"}).id
    return World(crm, a, b, customer)


def give(world: World, principal: Principal, grant: ConsentGrant) -> Consent:
    with db.transaction(world.crm.sessions) as session:
        consent = customers.give_consent(session, principal, world.customer, grant)
        session.expunge(consent)
        return consent


def refused(world: World, principal: Principal, grant: ConsentGrant) -> str:
    """The reason `grant` is refused; nothing is written."""
    before = world.counts()
    with pytest.raises((InvalidError, Forbidden)) as caught:
        give(world, principal, grant)
    assert world.counts() == before
    return caught.value.reason


def test_the_migration_ships_the_text_in_english_and_french(world: World) -> None:
    with world.crm.sessions() as session:
        en = consent_text.active_for(session, RECOGNITION, "en")
        fr = consent_text.active_for(session, RECOGNITION, "fr")
        assert en is not None and fr is not None
        assert (en.version, fr.version) == (CURRENT, CURRENT)
        assert "recognise my face" in en.body
        assert "reconnaissent mon visage" in fr.body and "retirer ce consentement" in fr.body
        assert consent_text.languages(session, RECOGNITION) == ["en", "fr"]
        assert consent_text.active_for(session, Purpose.MARKETING, "en") is None


def test_a_consent_points_at_the_exact_text_and_an_edit_is_a_new_version(world: World) -> None:
    alice = world.staff("alice", world.a)
    first = give(world, alice, ConsentGrant(RECOGNITION, None, "kiosk"))
    with world.crm.sessions() as session:
        shown = consent_text.active_for(session, RECOGNITION, "en")
        assert shown is not None and first.text_id == shown.id
        old_body, old_id = shown.body, shown.id
    with pytest.raises(Forbidden), db.transaction(world.crm.sessions) as session:
        consent_text.create_version(session, alice, RECOGNITION, "en", "Anything.")
    with db.transaction(world.crm.sessions) as session:
        new = consent_text.create_version(session, SYSTEM, RECOGNITION, "en", "New wording.")
        new_id, new_version = new.id, new.version
    assert new_version.endswith("-v2")
    with world.crm.sessions() as session:
        old = session.get(ConsentText, old_id)
        assert old is not None and (old.body, old.active) == (old_body, False)  # unchanged
        kept = session.get(Consent, first.id)
        assert kept is not None and kept.text_id == old_id  # still the text it was given on
        assert consent_text.active_for(session, RECOGNITION, "en").id == new_id  # type: ignore[union-attr]
        action = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "consent_text_create")
        ).one()
        assert action.detail["replaces"] == old_id and action.actor == SYSTEM.label
    # the page that showed the old text is refused: the customer must see the current one
    assert refused(world, alice, ConsentGrant(RECOGNITION, old_id, "kiosk")) == (
        "consent_text_inactive"
    )
    assert refused(world, alice, ConsentGrant(RECOGNITION, CURRENT, "kiosk")) == (
        "consent_text_inactive"
    )
    assert refused(world, alice, ConsentGrant(RECOGNITION, 999_999, "kiosk")) == (
        "unknown_consent_text"
    )
    assert refused(world, alice, ConsentGrant(Purpose.MARKETING, new_id, "kiosk")) == (
        "consent_text_purpose"
    )
    assert refused(world, alice, ConsentGrant(Purpose.MARKETING, None, "kiosk")) == (
        "no_consent_text"
    )
    again = give(world, alice, ConsentGrant(RECOGNITION, new_id, "kiosk"))
    assert (again.text_id, again.text_version) == (new_id, new_version)
    with db.transaction(world.crm.sessions) as session, pytest.raises(Exception) as taken:
        consent_text.create_version(session, SYSTEM, RECOGNITION, "en", "x", new_version)
    assert getattr(taken.value, "reason", "") == "conflict"


def test_store_and_witness_come_from_the_principal(world: World) -> None:
    alice = world.staff("alice", world.a)
    consent = give(world, alice, ConsentGrant(RECOGNITION, None, "kiosk"))
    assert (consent.store_id, consent.witness, consent.witness_id) == (
        world.a,
        "staff:alice",
        "id-alice",
    )
    assert refused(world, alice, ConsentGrant(RECOGNITION, None, "kiosk", world.b)) == ("forbidden")
    both = world.staff("bob", world.a, world.b)
    assert refused(world, both, ConsentGrant(RECOGNITION, None, "kiosk")) == "store_required"
    assert give(world, both, ConsentGrant(RECOGNITION, None, "kiosk", world.b)).store_id == (
        world.b
    )
    kiosk = Principal("device", "dev-1", "kiosk A", "kiosk", frozenset({world.a}))
    by_kiosk = give(world, kiosk, ConsentGrant(RECOGNITION, None, "kiosk"))
    assert (by_kiosk.store_id, by_kiosk.witness) == (world.a, "device:kiosk A")
    assert give(world, SYSTEM, ConsentGrant(RECOGNITION, None, "cli")).store_id is None


def test_a_withdrawal_records_who_where_and_how(world: World) -> None:
    give(world, SYSTEM, ConsentGrant(RECOGNITION, None, "cli"))
    alice = world.staff("alice", world.a)
    world.crm.withdraw(world.customer, RECOGNITION, alice, channel="associate")
    with world.crm.sessions() as session:
        (consent,) = session.scalars(select(Consent)).all()
        assert consent.withdrawn_at is not None
        assert (consent.withdrawn_by, consent.withdrawn_store_id, consent.withdrawn_channel) == (
            "staff:alice",
            world.a,
            "associate",
        )
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "consent_withdraw")
        ).one()
        assert (event.store_id, event.detail["channel"]) == (world.a, "associate")
    # a withdrawal is never blocked for want of a store
    give(world, SYSTEM, ConsentGrant(RECOGNITION, None, "cli"))
    world.crm.withdraw(world.customer, RECOGNITION, world.staff("bob", world.a, world.b))


def test_the_store_language_and_minimum_age(world: World) -> None:
    manager = world.staff("maud", world.a, role="manager")
    with db.transaction(world.crm.sessions) as session:
        options = enrollment.configure(
            session, manager, world.a, {"language": "fr", "min_age": 18, "ask_phone": True}
        )
    assert (options.language, options.min_age, options.ask_phone, options.ask_tier) == (
        "fr",
        18,
        True,
        False,
    )
    with pytest.raises(Forbidden), db.transaction(world.crm.sessions) as session:
        enrollment.configure(session, manager, enrollment.CHAIN, {"min_age": 16})
    with pytest.raises(InvalidError), db.transaction(world.crm.sessions) as session:
        enrollment.configure(session, SYSTEM, world.a, {"kiosk_idle_seconds": 0})
    alice = world.staff("alice", world.a)
    assert refused(world, alice, ConsentGrant(RECOGNITION, None, "kiosk")) == ("age_not_confirmed")
    assert refused(world, alice, ConsentGrant(RECOGNITION, None, "kiosk", age_confirmed=16)) == (
        "age_not_confirmed"
    )
    consent = give(world, alice, ConsentGrant(RECOGNITION, None, "kiosk", age_confirmed=18))
    with world.crm.sessions() as session:
        shown = session.get(ConsentText, consent.text_id)
        assert shown is not None and shown.language == "fr"  # the store's language
    assert consent.age_confirmed == 18
    english = give(
        world, alice, ConsentGrant(RECOGNITION, None, "kiosk", language="en", age_confirmed=18)
    )
    with world.crm.sessions() as session:
        assert session.get(ConsentText, english.text_id).language == "en"  # type: ignore[union-attr]
    # store B has no override: the chain's defaults (no age asked, English)
    bob = world.staff("bob", world.b)
    with world.crm.sessions() as session:
        assert enrollment.effective(session, world.b) == enrollment.Options()
    assert give(world, bob, ConsentGrant(RECOGNITION, None, "kiosk")).age_confirmed is None


def test_the_migration_backfills_older_consents(settings: Settings, database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        db.migrate(engine, "0010")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO customers (id, name, tier, preferences, notes, show_photo, "
                    "created_at, updated_at) VALUES ('c1', 'Ada', 'standard', '{}', '', "
                    "false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            for version in (CURRENT, "1999-v0"):
                conn.execute(
                    text(
                        "INSERT INTO consents (customer_id, purpose, text_version, channel, "
                        "given_at) VALUES ('c1', 'in_store_recognition', :v, 'kiosk', "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"v": version},
                )
        db.migrate(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.text_version, t.language, t.active FROM consents c "
                    "JOIN consent_texts t ON t.id = c.text_id ORDER BY c.id"
                )
            ).all()
        assert [tuple(r) for r in rows] == [(CURRENT, "en", True), ("1999-v0", "und", False)]
        db.downgrade(engine, "0010")
        db.migrate(engine)
    finally:
        engine.dispose()


# -- the API ------------------------------------------------------------------------------


@dataclass
class Api:
    url: str
    crm: FaceCRM
    a: str
    b: str
    tokens: dict[str, str]
    kiosk_key: str
    faces: Path

    def client(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=60)


@pytest.fixture()
def api(
    settings: Settings, pipeline: FacePipeline, database_url: str, faces_dir: Path
) -> Iterator[Api]:
    settings.database_url = database_url
    crm = FaceCRM(settings, pipeline=pipeline, migrate=True)
    with db.transaction(crm.sessions) as session:
        a = accounts.create_store(session, "A", "Store A", SYSTEM).id
        b = accounts.create_store(session, "B", "Store B", SYSTEM).id
        accounts.create_staff(session, "admin", PASSWORD, "admin", principal=SYSTEM)
        accounts.create_staff(session, "alice", PASSWORD, "associate", [a], principal=SYSTEM)
        accounts.create_staff(session, "bob", PASSWORD, "associate", [a, b], principal=SYSTEM)
        _, kiosk_key = accounts.create_device(session, a, "kiosk", principal=SYSTEM)
    with serve(create_app(crm)) as url:
        tokens = {}
        for who in ("admin", "alice", "bob"):
            r = httpx.post(f"{url}/api/v1/auth/token", data={"username": who, "password": PASSWORD})
            tokens[who] = r.json()["access_token"]
        yield Api(url, crm, a, b, tokens, kiosk_key, faces_dir)
    crm.engine.dispose()


def test_consent_texts_and_evidence_over_the_api(api: Api) -> None:
    with api.client("admin") as admin, api.client("alice") as alice, api.client("bob") as bob:
        texts = alice.get("/consent-texts", params={"active": "true"}).json()
        shipped = {(t["purpose"], t["language"], t["version"]) for t in texts}
        recognition = {("in_store_recognition", lang, CURRENT) for lang in ("en", "fr")}
        assert shipped == recognition | {("face_payment", "en", "2026-12-v1")}  # 0019
        texts = [t for t in texts if t["purpose"] == "in_store_recognition"]
        fr = next(t for t in texts if t["language"] == "fr")
        assert alice.get(f"/consent-texts/{fr['id']}").json()["body"] == fr["body"]
        new = {"purpose": "marketing", "language": "en", "body": "Offers by e-mail."}
        r = alice.post("/consent-texts", json=new)
        assert r.status_code == 403, r.text
        r = admin.post("/consent-texts", json=new)
        assert r.status_code == 201, r.text
        marketing = r.json()
        assert marketing["active"] and marketing["created_by"] == "staff:admin"

        rose = alice.post("/customers", json={"name": "Rose Leslie"}).json()["id"]
        consents = f"/customers/{rose}/consents"
        body = {"purpose": "in_store_recognition", "text_id": fr["id"], "channel": "kiosk"}
        # the witness is the caller: a client's word for it is refused, nothing written
        r = alice.post(consents, json={**body, "witness": "Someone Else"})
        assert r.status_code == 422, r.text
        r = alice.post(consents, json={**body, "store_id": api.b})
        assert r.status_code == 403, r.text
        r = bob.post(consents, json=body)
        assert (r.status_code, r.json()["reason"]) == (422, "store_required")
        r = alice.post(consents, json={**body, "text_id": marketing["id"]})
        assert (r.status_code, r.json()["reason"]) == (422, "consent_text_purpose")
        r = alice.post(consents, json={**body, "text_version": CURRENT})
        assert r.status_code == 422, r.text  # one way of naming the text, not two
        assert admin.get(f"/customers/{rose}/export").json()["consents"] == []

        r = alice.post(consents, json=body)
        assert r.status_code == 201, r.text
        given = r.json()
        assert (given["text_id"], given["store_id"], given["witness"]) == (
            fr["id"],
            api.a,
            "staff:alice",
        )
        r = alice.post(
            consents, json={"purpose": "marketing", "text_version": "1999-v0", "channel": "web"}
        )
        assert (r.status_code, r.json()["reason"]) == (422, "bad_consent_version")
        r = alice.post(consents, json={"purpose": "marketing", "channel": "web"})
        assert r.status_code == 201 and r.json()["text_id"] == marketing["id"]

        r = bob.delete(f"{consents}/marketing", params={"channel": "phone", "store_id": api.b})
        assert r.status_code == 204, r.text
        export = admin.get(f"/customers/{rose}/export").json()
        by_purpose = {c["purpose"]: c for c in export["consents"]}
        shown = by_purpose["in_store_recognition"]["text"]
        assert (shown["id"], shown["language"], shown["body"]) == (fr["id"], "fr", fr["body"])
        gone = by_purpose["marketing"]
        assert gone["text"]["body"] == "Offers by e-mail." and not gone["active"]
        assert (gone["withdrawn_by"], gone["withdrawn_store_id"], gone["withdrawn_channel"]) == (
            "staff:bob",
            api.b,
            "phone",
        )

        # enrollment options: a manager's stores, the chain's for admins
        r = alice.put(f"/enrollment-options/{api.a}", json={"min_age": 18})
        assert r.status_code == 403
        r = admin.put(f"/enrollment-options/{api.a}", json={"min_age": 18, "language": "fr"})
        assert r.status_code == 200 and r.json()["min_age"] == 18, r.text
        r = admin.put("/enrollment-options/*", json={"kiosk_idle_seconds": 1})
        assert r.status_code == 422
        assert admin.get(f"/enrollment-options/{api.b}").json()["min_age"] == 0
        r = alice.post(consents, json={"purpose": "in_store_recognition", "channel": "kiosk"})
        assert (r.status_code, r.json()["reason"]) == (422, "age_not_confirmed")
        r = alice.post(
            consents,
            json={"purpose": "in_store_recognition", "channel": "kiosk", "age_confirmed": 18},
        )
        assert r.status_code == 201 and r.json()["text_id"] == fr["id"]  # the store's language

    # a kiosk key opens the console's kiosk screen, and nothing in the API
    kiosk = httpx.get(
        f"{api.url}/api/v1/consent-texts", headers={"X-API-Key": api.kiosk_key}, timeout=30
    )
    assert kiosk.status_code == 403


def test_enrollment_records_the_text_shown(api: Api) -> None:
    """`FaceCRM.enroll` takes the text's id; the consent and the template come together."""
    from facecrm.vision.image import read_image

    alice = Principal("staff", "x", "alice", "associate", frozenset({api.a}))
    with api.crm.sessions() as session:
        fr = consent_text.active_for(session, RECOGNITION, "fr")
        assert fr is not None
    image = read_image(api.faces / "identities/rose_leslie/1.jpg", api.crm.settings)
    rose = api.crm.enroll("Rose", [Photo("p", image)], fr.id, "kiosk", alice)
    with api.crm.sessions() as session:
        customer = session.get(Customer, rose.id)
        assert customer is not None
        (consent,) = customer.consents
        assert (consent.text_id, consent.store_id, consent.witness) == (fr.id, api.a, "staff:alice")
